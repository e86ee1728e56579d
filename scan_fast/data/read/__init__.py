"""The read side: loaders that stage each epoch's kept ids from .beton parts or an in-place index,
decode them with FFCV's compiled pipelines and keyed crops, and checks and views of stored data.
Imports the shared formats of scan_fast.data, never the write side."""
