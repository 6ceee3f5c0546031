"""Running generated code: the executable, the compile cache, prebuilt libraries, the worker pool."""
