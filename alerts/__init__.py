"""The alert listener: change log readers (PostgreSQL, RisingWave, Materialize) and sinks."""
