"""The Lenscope search API: ``search.proto`` and the Python code generated from it.

``search_pb2`` / ``search_pb2_grpc`` are generated (``python -m lenscope.client.api.generate``) and
committed, so serving needs only the protobuf and grpcio runtimes, not grpcio-tools.
"""
