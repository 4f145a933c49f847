"""Build tooling of the course, kept apart from the lessons in `llm_tutorial/`.

* `report`: execute the notebooks (`make run`), re-make their committed outputs (`make
  goldens`), time them (`make bench`) and plan `make repro`'s kernel paths;
* `site`: render the executed notebooks, and the run's report, into the offline course site.

Nothing in `llm_tutorial/` imports this package (tests/test_layout.py).
"""
