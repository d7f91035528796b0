#!/usr/bin/env python3
"""A gRPC client nobody on the Latchkey team wrote: the official Python library, which learns the
API through server reflection only (no generated stubs) and calls one RPC from a JSON body.

usage: grpc_reflection_client.py HOST:PORT BEARER_TOKEN SERVICE METHOD JSON_BODY
Prints the response as JSON (proto field names) on stdout; exits 1 with the gRPC status on stderr.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    address, token, service_name, method_name, body = sys.argv[1:6]
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        if service_name not in database.get_services():
            print(f"{service_name} is not offered by reflection", file=sys.stderr)
            return 1
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(body, request_class())
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            response = call(request, metadata=[("authorization", f"Bearer {token}")], timeout=30)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True)))
        return 0


if __name__ == "__main__":
    sys.exit(main())
