"""The core: the facade (matcher), the contracts, the composition root, and every decision a face or a backend does not make."""
