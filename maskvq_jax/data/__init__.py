"""Everything that feeds the models: datasets, input pipelines, tokens and trained tokenizers.

  builders/     TFDS dataset builders (procedural shapes, image folders) and their registry.
  build.py      CLI: `python -m maskvq_jax.data.build --name shapes/32`.
  pipeline.py   stage-1 image pipeline: TFDS data source -> grain -> globally sharded batches.
  tokens.py     stage-2 inputs: images tokenised on the fly, or exported token shards.
  tokenizer.py  saving / restoring a frozen tokenizer directory (variables + model kwargs).
  runs.py       finding and loading what trained runs left (tokenizers, stage-1/2 workdirs).
"""
