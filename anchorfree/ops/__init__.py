"""Generic detection maths shared by every family: boxes, point grids, losses."""
