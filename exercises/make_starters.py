"""Write the exercise starters by cutting the step code out of the reference apps.

Run `python exercises/make_starters.py` after a change to a reference app, so
that each starter keeps the reference's code in the same order. With
`--check` it writes nothing and exits with status 1 when a starter is out of
date, which tests/exercises/test_starters.py runs.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 88


class Cutter:
    """The source of one reference app and the cuts that turn it into a starter."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)
        self.tree = ast.parse(source)
        # (first line, end line, replacement), lines 0-based and end exclusive.
        self.cuts: list[tuple[int, int, str]] = []

    def func(self, name: str) -> ast.FunctionDef:
        """Return the function definition called `name`."""
        node = self.find(
            lambda node: isinstance(node, ast.FunctionDef) and node.name == name
        )
        assert isinstance(node, ast.FunctionDef)
        return node

    def find(self, predicate: Callable[[ast.AST], bool]) -> Any:
        """Return the first node of the source that `predicate` accepts."""
        for node in ast.walk(self.tree):
            if predicate(node):
                return node
        raise LookupError("the reference app has no node that the cut expects")

    def body(self, name: str, comment: str, tail: str = "") -> None:
        """Replace the body of function `name`, after its docstring, by a comment."""
        statements = self.func(name).body
        first = statements[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            first = statements[1]
        self.stmts(first, statements[-1], comment, tail)

    def stmts(
        self, first: ast.stmt, last: ast.stmt, comment: str, tail: str = ""
    ) -> None:
        """Replace the statements from `first` to `last` by a comment and `tail`."""
        indent = " " * first.col_offset
        replacement = self.block(comment, indent, tail)
        self.cuts.append((first.lineno - 1, _end(last), replacement))

    def text(self, old: str, new: str) -> None:
        """Replace the whole lines of `old`, which occurs once, by `new`.

        The lines of `new` after its first are dedented.
        """
        source = "".join(self.lines)
        if source.count(old) != 1:
            raise LookupError(f"the reference app does not contain {old[:60]!r} once")
        start = source[: source.index(old)].count("\n")
        end = start + old.count("\n") + 1
        # The lines after the first are indented like the code that calls this.
        head, _, rest = new.partition("\n")
        self.cuts.append((start, end, head + "\n" + textwrap.dedent(rest) + "\n"))

    def comments_above(self, line: int) -> int:
        """Return the first line of the comment block that ends above `line`."""
        while self.lines[line - 1].strip().startswith("#"):
            line -= 1
        return line

    @staticmethod
    def block(comment: str, indent: str, tail: str) -> str:
        """Return `comment` as wrapped comment lines at `indent`, then `tail`."""
        width = WIDTH - len(indent) - 2
        paragraphs = [
            textwrap.fill(" ".join(part.split()), width, break_long_words=False)
            for part in textwrap.dedent(comment).strip("\n").split("\n\n")
        ]
        text = "\n\n".join(paragraphs)
        lines = [f"{indent}# {line}".rstrip() for line in text.splitlines()]
        lines += [
            indent + line for line in textwrap.dedent(tail).strip("\n").splitlines()
        ]
        return "".join(line + "\n" for line in lines)

    def result(self) -> str:
        """Return the starter: the source with every cut applied."""
        lines = list(self.lines)
        for start, end, replacement in sorted(self.cuts, reverse=True):
            lines[start:end] = [replacement]
        # The reference's snippet markers for the docs mean nothing in a starter.
        text = "".join(line for line in lines if "--8<--" not in line)
        return re.sub(r"\n{4,}", "\n\n\n", text)


def _end(node: ast.stmt) -> int:
    assert node.end_lineno is not None
    return node.end_lineno


def _docstring(cutter: Cutter) -> str:
    docstring = ast.get_docstring(cutter.tree, clean=False)
    assert docstring is not None, "the reference app has no module docstring"
    return docstring


def cut_streamlit(source: str) -> str:
    """Return the Streamlit starter made from the reference app's source."""
    cutter = Cutter(source)
    doc = _docstring(cutter)
    cutter.text(
        '"""' + doc + '"""',
        '''"""Exercise starter: build the Streamlit frontend step by step.

    This is the reference app, frontbench_streamlit/app.py, with the code of five
    steps taken out. Each `# Step N` comment describes the code that goes there.
    Serve this file with `frontbench frontend streamlit --app
    exercises/streamlit/app.py` and check it with `nox -s exercise -- streamlit N`.

    Streamlit runs this file as a script from top to bottom on every interaction,
    in one thread per browser session, and keeps per-session values in
    `st.session_state`.
    """''',
    )
    upload_with = cutter.find(
        lambda node: (
            isinstance(node, ast.With)
            and ast.unparse(node.items[0].context_expr) == "upload_column"
        )
    )
    cutter.stmts(
        upload_with.body[0],
        upload_with.body[-1],
        """
    Step 1: upload and preview. Add st.file_uploader labelled "Upload an image
    of one digit" that accepts UPLOAD_TYPES. Give it key="upload", because the
    Locust user of step 6 finds the widget by that key. Pass
    on_change=predict_upload and args=(settings,), so that each new file is
    predicted. Streamlit lists the uploaded file under the widget.
    """,
        "pass",
    )
    cutter.body(
        "predict",
        """
    Step 2: call the backend through the client. Get the shared client with
    client_for(settings, retry=True) and measure the time around its
    predict(image, filename=filename). Store Outcome(prediction, latency_ms,
    image, filename) in st.session_state.outcome and set
    st.session_state.error to None.

    Step 5: handle errors. Wrap the predict call in try/except BackendError.
    On an error, log it with logger.warning (the filename, exc.request_id and
    exc), set st.session_state.outcome to None, store user_message(exc) in
    st.session_state.error and return.
    """,
    )
    cutter.body(
        "show_prediction",
        """
    Step 3: show the label. Split the row with st.columns([1, 2]). In the first
    column, show st.image(preview(outcome.image, pixels=PREVIEW_PIXELS),
    caption=outcome.filename). In the second, write
    st.subheader(f"Predicted digit: {outcome.prediction.label}"), then the
    confidence in percent and outcome.latency_ms with st.markdown.

    Step 4: draw the probability chart. Build a pandas DataFrame with a
    "digit" column (the keys of outcome.prediction.probabilities) and a
    "probability" column (its values), and draw it with st.bar_chart(frame,
    x="digit", y="probability", sort=False, height=240).
    """,
    )
    cutter.body(
        "show_error",
        """
    Step 5: handle errors. Show the message with st.error, which draws it in a
    red box.
    """,
    )
    return cutter.result()


def cut_dash(source: str) -> str:
    """Return the Dash starter made from the reference app's source."""
    cutter = Cutter(source)
    doc = _docstring(cutter)
    cutter.text(
        '"""' + doc + '"""',
        '''"""Exercise starter: build the Dash frontend step by step.

    This is the reference app, frontbench_dash/app.py, with the code of five steps
    taken out. Each `# Step N` comment describes the code that goes there. Serve
    this file with `frontbench frontend dash --app exercises/dash/app.py` and check
    it with `nox -s exercise -- dash N`.

    Dash callbacks are stateless: each one is a POST to /_dash-update-component
    that any thread of any gunicorn worker can handle.
    """''',
    )
    upload_column = cutter.find(
        lambda node: (
            isinstance(node, ast.Assign)
            and ast.unparse(node.targets[0]) == "upload_column"
        )
    )
    items = upload_column.value.args[0].elts
    upload_index = next(
        i for i, item in enumerate(items) if "id='upload'" in ast.unparse(item)
    )
    preview_index = next(
        i for i, item in enumerate(items) if "id='preview'" in ast.unparse(item)
    )
    # The comment above dcc.Upload goes too, because its lines precede the node.
    first = items[upload_index]
    first_line = first.lineno - 1
    while cutter.lines[first_line - 1].strip().startswith("#"):
        first_line -= 1
    cutter.cuts.append(
        (
            first_line,
            _end(items[preview_index]),
            cutter.block(
                """
    Step 1: upload and preview. Put a dcc.Upload with id="upload" here, with
    ["Drag and drop or ", html.A("choose an image")] as its children and
    max_size=settings.max_request_bytes. Give it no `accept` filter, because
    dcc.Upload drops a file that does not match it without any callback. Below
    it, put html.Img(id="preview", hidden=True, alt="Uploaded image").
    """,
                " " * first.col_offset,
                "",
            ),
        )
    )
    clientside = cutter.find(
        lambda node: (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "clientside_callback"
        )
    )
    start = clientside.lineno - 1
    while cutter.lines[start - 1].strip().startswith("#"):
        start -= 1
    load_example = cutter.func("load_example")
    cutter.cuts.append(
        (
            start,
            _end(load_example),
            cutter.block(
                """
    Step 1: upload and preview. Show the upload in the browser, so the image is
    not sent back to it: a clientside_callback whose JavaScript function gets
    the upload's contents (a data URL) and returns [contents, false] for a PNG,
    JPEG, WebP, BMP or GIF data URL and [null, true] otherwise, with
    Output("preview", "src"), Output("preview", "hidden"),
    Input("upload", "contents") and prevent_initial_call=True.

    Then write load_example(n_clicks), a @callback with Output("upload",
    "contents"), Output("upload", "filename"), Input({"type": "example",
    "index": ALL}, "n_clicks") and prevent_initial_call=True. It looks up
    EXAMPLES[ctx.triggered_id["index"]] and returns
    (data_url(example.read_bytes()), example.path.name), so that a click on an
    example uploads it. Raise PreventUpdate when nothing was clicked.
    """,
                "",
                "",
            ),
        )
    )
    predict = cutter.func("predict")
    start = predict.decorator_list[0].lineno - 1
    cutter.cuts.append(
        (
            start,
            _end(predict),
            cutter.block(
                """
    Step 2: call the backend through the client. Write predict(contents,
    filename), a @callback with Output("result", "children"),
    Output("error", "children"), Input("upload", "contents"),
    State("upload", "filename") and prevent_initial_call=True. Decode the
    upload with read_upload(contents), measure the time around
    get_client().predict(image, filename=filename or "upload"), and return
    (render_prediction(prediction, latency_ms), None).

    Step 5: handle errors. read_upload raises ValueError for an upload that is
    not a data URL or is too large: log it with logger.warning and return
    (None, render_error(str(exc))). Wrap the predict call in try/except
    BackendError, log the error with exc.request_id, and return
    (None, render_error(user_message(exc))).
    """,
                "",
                "",
            ),
        )
    )
    cutter.body(
        "render_prediction",
        """
    Step 3: show the label. Return a list of components, starting with
    html.P(f"Predicted digit: {prediction.label}",
    className="predicted-digit"), then the confidence in percent and
    latency_ms, each in its own html.P.

    Step 4: draw the probability chart. Build a go.Figure of one go.Bar with
    the digits (the keys of prediction.probabilities) on x and their
    probabilities on y, with a category x axis and a y range of [0, 1]. Add
    dcc.Graph(id="chart", figure=figure, config={"displayModeBar": False}) to
    the list.
    """,
        "return []",
    )
    cutter.body(
        "render_error",
        """
    Step 5: handle errors. Return the message in an html.P, which predict puts
    into the "error" element (role="alert").
    """,
        "return html.P()",
    )
    return cutter.result()


def cut_gradio(source: str) -> str:
    """Return the Gradio starter made from the reference app's source."""
    cutter = Cutter(source)
    doc = _docstring(cutter)
    cutter.text(
        '"""' + doc + '"""',
        '''"""Exercise starter: build the Gradio frontend step by step.

    This is the reference app, frontbench_gradio/app.py, with the code of five
    steps taken out. Each `# Step N` comment describes the code that goes there.
    Serve this file with `frontbench frontend gradio --app exercises/gradio/app.py`
    and check it with `nox -s exercise -- gradio N`.

    Every event goes through Gradio's queue, and the upload's predict event is also
    the API endpoint `/predict`.
    """''',
    )
    tab = cutter.find(
        lambda node: (
            isinstance(node, ast.With)
            and ast.unparse(node.items[0].context_expr) == "gr.Tab('Upload')"
        )
    )
    cutter.stmts(
        tab.body[0],
        tab.body[-1],
        """
    Step 1: upload and preview. Add upload = gr.Image(label="Upload an image
    of one digit", elem_id="upload", sources=["upload"], height=280), which
    shows the uploaded image. Below it, say which file types and size are
    accepted with gr.Markdown (the size is settings.max_upload_bytes / MiB
    megabytes). If first_example_per_label() returns examples,
    add gr.Examples(examples, inputs=upload, label="Or try a held-out example").
    """,
        "pass",
    )
    change = cutter.find(
        lambda node: (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "upload.change"
        )
    )
    start = change.lineno - 1
    while cutter.lines[start - 1].strip().startswith("#"):
        start -= 1
    cutter.cuts.append(
        (
            start,
            _end(change),
            cutter.block(
                """
    Step 2: call the backend through the client. Run predict_upload whenever
    the upload changes: upload.change(partial(predict_upload, client),
    inputs=upload, outputs=[answer, chart, error], api_name="predict",
    preprocess=False). The Locust user of step 6 calls the event by its
    api_name. Without preprocessing, the callback gets the uploaded file as it
    is, so the backend can say why a file is not an image.
    """,
                " " * change.col_offset,
                "",
            ),
        )
    )
    limit = cutter.find(
        lambda node: (
            isinstance(node, ast.Assign)
            and ast.unparse(node.targets[0]) == "upload_limit_mb"
        )
    )
    cutter.cuts.append((limit.lineno - 1, _end(limit), ""))
    cutter.body(
        "predict_upload",
        """
    Step 2: call the backend through the client. `file` is Gradio's file data
    (a dict), or None when the upload was cleared. Return ("", None, "") for
    None, else predict(client, file["path"], file.get("orig_name")).
    """,
        'return "", None, ""',
    )
    cutter.body(
        "predict",
        """
    Step 2: call the backend through the client. Measure the time around
    client.predict(image, filename=filename) and return
    render_answer(prediction, latency_ms).

    Step 5: handle errors. Wrap the predict call in try/except BackendError and
    return render_error(exc).
    """,
        'return "", None, ""',
    )
    cutter.body(
        "render_answer",
        """
    Step 3: show the label. The first value is Markdown for the answer
    element: "### Predicted digit: {label}", then the confidence in percent and
    latency_ms on their own lines.

    Step 4: draw the probability chart. The second value is a pandas DataFrame
    with a "digit" column (the keys of prediction.probabilities) and a
    "probability" column (its values), which the gr.BarPlot draws. The third
    value is the error text, "" here.
    """,
        'return "", None, ""',
    )
    cutter.body(
        "render_error",
        """
    Step 5: handle errors. Log the error with logger.warning (exc.request_id,
    its type and exc.message) and return ("", None, f"> {user_message(exc)}"),
    so the message shows as a quote in the error element.
    """,
        'return "", None, ""',
    )
    return cutter.result()


STARTERS = {
    "streamlit": ("frontends/streamlit/frontbench_streamlit/app.py", cut_streamlit),
    "dash": ("frontends/dash/frontbench_dash/app.py", cut_dash),
    "gradio": ("frontends/gradio/frontbench_gradio/app.py", cut_gradio),
}


def main(argv: list[str]) -> int:
    """Write the starters, or with --check report those that are out of date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit with status 1 if a starter is out of date",
    )
    args = parser.parse_args(argv)

    stale = []
    for framework, (reference, cut) in STARTERS.items():
        starter = ROOT / "exercises" / framework / "app.py"
        expected = cut((ROOT / reference).read_text())
        if starter.read_text() == expected:
            continue
        if args.check:
            stale.append(framework)
            print(f"{starter} is out of date with {reference}")
        else:
            starter.write_text(expected)
            print(f"wrote {starter}")
    if stale:
        print("Run `python exercises/make_starters.py` and commit the starters.")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
