"""Frontier's own gRPC API: the committed generated modules match proto/ (run `make proto` when not)."""

from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from frontier_picker.proto.v1 import picker_pb2

ROOT = Path(__file__).resolve().parents[2]


def without_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """protoc's descriptor set spells out the JSON field names that the generated module leaves implied."""
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        without_json_names(message.nested_type)


def test_the_generated_modules_match_the_proto_files(tmp_path: Path) -> None:
    source = "frontier_picker/proto/v1/picker.proto"
    descriptor_set = tmp_path / "picker.pb"
    status = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={descriptor_set}", source])
    assert status == 0, "protoc failed on proto/"
    compiled = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file[0]
    without_json_names(compiled.message_type)
    committed = descriptor_pb2.FileDescriptorProto.FromString(picker_pb2.DESCRIPTOR.serialized_pb)
    # Compared as descriptors, not text: a newer grpcio-tools writes different Python for the same API.
    assert committed == compiled, "picker_pb2 is stale: run `make proto` and commit the result"
