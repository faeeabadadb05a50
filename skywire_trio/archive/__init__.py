"""The Parquet archive: each closed day of the log exported, verified and recorded before
retention may drop it. Reads the log only through ``skywire_trio.log``."""
