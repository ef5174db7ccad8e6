"""Speed tricks of the CPU networks (private): the fused inference pass, oneDNN convolution
gradients, the MAD-norm autograd node and float32 fall-backs of reduced precision."""
