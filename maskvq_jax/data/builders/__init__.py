"""Offline datasets: procedural shapes (numpy + PIL) and local image folders (FFHQ, any folder).

Both are TFDS `GeneratorBasedBuilder`s written as array_record, so `tfds.data_source` gives random
access for grain. Importing this package does not import TensorFlow; building does (TFDS writer).
"""
