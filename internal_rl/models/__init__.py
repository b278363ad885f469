"""The base autoregressive model, its hook points and KV-cached stepping, and the residual-stream controller."""
