"""Golden and numerical tests of the IR passes and the ops they rewrite."""
