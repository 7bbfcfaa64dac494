"""Makes the ``sitecustomize`` here a module of its own when pytest collects doctests.

(``tests/break_app`` has a ``sitecustomize`` too.)
"""
