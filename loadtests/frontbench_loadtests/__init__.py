"""Locust users for every setup and the backend scaling experiment."""
