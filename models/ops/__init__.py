"""Lightning Attention kernels: naive reference, chunked and recurrent PyTorch forms, fla dispatch."""
