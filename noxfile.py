"""Developer and CI tasks for frontbench.

`nox` runs lint, typecheck and tests. `nox --list` shows every session, and
`nox -s NAME -- ARGS` passes ARGS through to the session's command. Sessions
install the project with pip into their own virtualenv, and `nox -r` reuses
them between runs.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]

# The same versions as in .pre-commit-config.yaml, so that both agree.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
# mkdocs.yml uses the Material theme and pymdown extensions.
DOCS_REQUIREMENTS = ("mkdocs>=1.6", "mkdocs-material>=9.5", "pymdown-extensions>=10")

PACKAGES = (
    "frontbench_shared",
    "frontbench_backend",
    "frontbench_streamlit",
    "frontbench_dash",
    "frontbench_gradio",
    "frontbench_loadtests",
)
PYTHON_PATHS = (
    "shared",
    "backend",
    "frontends",
    "loadtests",
    "exercises",
    "tests",
    "noxfile.py",
)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite with pytest; arguments after `--` go to pytest."""
    session.install("-e", ".[all,test]")
    # Tests marked slow (the load-test smoke run) belong to `nox -s loadtest`.
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check the code with ruff's linter and formatter."""
    session.install(RUFF)
    session.run("ruff", "check", *PYTHON_PATHS)
    session.run("ruff", "format", "--check", *PYTHON_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Check the types of every package with mypy --strict."""
    session.install("-e", ".[all,test]", MYPY)
    package_options = [option for name in PACKAGES for option in ("-p", name)]
    session.run("mypy", "--strict", *package_options, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Measure the backend's inference latency and throughput."""
    session.install("-e", ".[backend]")
    session.run("python", "-m", "frontbench_backend.benchmark", *session.posargs)


@nox.session
def loadtest(session: nox.Session) -> None:
    """Run a short smoke version of the scaling experiment and check its report."""
    session.install("-e", ".[all,test]")
    session.run(
        "pytest", "-m", "slow", "tests/loadtests/test_bench_smoke.py", *session.posargs
    )


@nox.session
def compare(session: nox.Session) -> None:
    """Measure each frontend's cold start, memory per session and install size."""
    session.install("-e", ".[all,test]")
    session.run("python", "-m", "frontbench_loadtests.compare", *session.posargs)


@nox.session
def exercise(session: nox.Session) -> None:
    """Check an exercise app: `nox -s exercise -- FRAMEWORK [STEP] [--app PATH]`."""
    session.install("-e", ".[all,test]")
    session.run("python", "exercises/check.py", *session.posargs)


@nox.session
def exercises(session: nox.Session) -> None:
    """Check that the reference apps pass every exercise step and starters fail."""
    session.install("-e", ".[all,test]")
    session.run("pytest", "-m", "slow", "tests/exercises", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs, failing on any warning."""
    # The API page is generated from the backend's OpenAPI schema.
    session.install("-e", ".[backend]", *DOCS_REQUIREMENTS)
    # Material prints a banner about its successor on every build otherwise.
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """Run the tests marked gpu, which need a CUDA device."""
    session.install("-e", ".[all,test]")
    session.run("pytest", "-m", "gpu", *session.posargs)


def _run_up(session: nox.Session, framework: str) -> None:
    session.install("-e", f".[backend,{framework}]")
    session.run("frontbench", "up", framework, *session.posargs)


@nox.session
def streamlit(session: nox.Session) -> None:
    """Start the backend and the Streamlit frontend (frontbench up streamlit)."""
    _run_up(session, "streamlit")


@nox.session
def dash(session: nox.Session) -> None:
    """Start the backend and the Dash frontend (frontbench up dash)."""
    _run_up(session, "dash")


@nox.session
def gradio(session: nox.Session) -> None:
    """Start the backend and the Gradio frontend (frontbench up gradio)."""
    _run_up(session, "gradio")
