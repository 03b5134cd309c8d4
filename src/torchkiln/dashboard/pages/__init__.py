"""The dashboard's pages: each module has a ``router`` and a ``NAV`` entry (see ``dashboard/app.py``)."""
