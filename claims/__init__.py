"""The paper's claims, one module per theorem family (registered as provider ``paper``)."""
