"""Datasets the worker reads, addressed by global sample index so the data position
survives every change of layout. The zero-set-up default is `byte_corpus`."""
