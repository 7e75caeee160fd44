"""Procedural shapes: generator (numpy + PIL, deterministic) and its TFDS builder."""
from maskvq_jax.datasets.shapes.generate import COLORS, SHAPES, SIZES, ShapesSource, make_example
