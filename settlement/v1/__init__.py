"""The gRPC contract ``settlement.v1`` (``proto/settlement/v1/*.proto``).

``settlement_pb2``, ``settlement_pb2_grpc`` and their stubs are generated
here by the build (``setup.py``, grpcio-tools) from the ``.proto`` files:
they are not in the repository and are never edited by hand. After changing
a ``.proto``, reinstall (``make test`` does when the file changed).
"""
