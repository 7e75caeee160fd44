"""Procedural shapes: generator (numpy + PIL, deterministic) and its TFDS builder."""
from maskvq_jax.data.builders.shapes.generate import COLORS, SHAPES, SIZES, ShapesSource, make_example
