"""See a ``.pt2``: an interactive, self-contained HTML view of its graph, and static pictures.

Nothing here imports torch or reads weight bytes: the view is built from the program JSON alone.
"""
