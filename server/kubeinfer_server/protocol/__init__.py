"""The OIP v2 / Triton protocol messages, from a private descriptor pool.

``inference.binpb`` is the descriptor set compiled from ``grpc_service.proto``
(``make proto``). It is loaded into a pool of its own, not protobuf's default
pool, so this process never clashes with another generated copy of the same
``inference`` package (tritonclient's, KServe's) imported beside it.
"""

from __future__ import annotations

from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE_NAME = "inference.GRPCInferenceService"

_files = descriptor_pb2.FileDescriptorSet.FromString(
    resources.files(__package__).joinpath("inference.binpb").read_bytes()
)
POOL = descriptor_pool.DescriptorPool()
for _file in _files.file:
    POOL.Add(_file)

SERVICE = POOL.FindServiceByName(SERVICE_NAME)


def message(name: str):
    """The message class for ``inference.<name>``."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


def enum_number(enum: str, value: str) -> int:
    """The number of ``value`` in the enum ``inference.<enum>``."""
    return POOL.FindEnumTypeByName(f"inference.{enum}").values_by_name[value].number


# The messages the servicer answers with.
ServerLiveResponse = message("ServerLiveResponse")
ServerReadyResponse = message("ServerReadyResponse")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelReadyResponse = message("ModelReadyResponse")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelConfig = message("ModelConfig")
ModelConfigResponse = message("ModelConfigResponse")
ModelStatisticsResponse = message("ModelStatisticsResponse")
RepositoryIndexResponse = message("RepositoryIndexResponse")
ModelInferResponse = message("ModelInferResponse")
ModelStreamInferResponse = message("ModelStreamInferResponse")

INSTANCE_KIND_GPU = enum_number("ModelInstanceGroup.Kind", "KIND_GPU")
INSTANCE_KIND_CPU = enum_number("ModelInstanceGroup.Kind", "KIND_CPU")
