"""Implementations behind the core's contracts: storage (a folder, S3), the LanceDB table engine, and Ray."""
