"""The parts of ``+exp=throughput`` (:mod:`sweeps.kinds.throughput`): the competing load
(:mod:`.load`), the work split into one shard per worker CPU on Ray (:mod:`.shards`) and the
summary made from the run's Parquet tables (:mod:`.summary`)."""
