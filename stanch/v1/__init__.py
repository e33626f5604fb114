"""Generated protobuf and gRPC code for the stanch.v1 protocol package.

Made by proto/generate.py from proto/stanch/v1/*.proto; do not edit.
"""
