"""rhox engine: the science (composition, structures, DFT, dataset, descriptors, BNN)."""
