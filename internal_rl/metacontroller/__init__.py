"""The metacontroller: unsupervised discovery of temporally abstract residual-stream controllers."""
