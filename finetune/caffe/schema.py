"""Caffe message classes built at run time from ``caffe_min.proto``.

protobuf's Python runtime can make message classes from a
``FileDescriptorProto`` without protoc or generated ``_pb2`` modules, which
tie a project to one protobuf release. This module reads the proto2 subset
used by ``caffe_min.proto`` (messages, nested enums, scalar/message/enum
fields with ``default`` and ``packed`` options) into such a descriptor.

Exports the classes ``NetParameter``, ``LayerParameter``,
``V1LayerParameter``, ``BlobProto`` and ``BlobShape``.
"""
import os
import re

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

PROTO_PATH = os.path.join(os.path.dirname(__file__), 'caffe_min.proto')

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    'double': _FDP.TYPE_DOUBLE, 'float': _FDP.TYPE_FLOAT,
    'int32': _FDP.TYPE_INT32, 'int64': _FDP.TYPE_INT64,
    'uint32': _FDP.TYPE_UINT32, 'uint64': _FDP.TYPE_UINT64,
    'bool': _FDP.TYPE_BOOL, 'string': _FDP.TYPE_STRING,
    'bytes': _FDP.TYPE_BYTES,
}
_LABELS = {'optional': _FDP.LABEL_OPTIONAL, 'repeated': _FDP.LABEL_REPEATED,
           'required': _FDP.LABEL_REQUIRED}
_TOKEN = re.compile(r'"[^"]*"|\'[^\']*\'|[A-Za-z_][\w.]*|-?[\d.]+(?:e-?\d+)?'
                    r'|[{}=;\[\],]')


def _tokens(text):
    text = re.sub(r'//[^\n]*', '', text)
    return _TOKEN.findall(text)


class _Parser:
    """Recursive-descent reader of the proto2 subset, one token list."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.pos = 0

    def next(self):
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, token):
        found = self.next()
        if found != token:
            raise ValueError('caffe_min.proto: expected %r, found %r'
                             % (token, found))

    def file(self):
        fdp = descriptor_pb2.FileDescriptorProto(
            name='finetune_caffe_min.proto', syntax='proto2')
        while self.pos < len(self.tokens):
            word = self.next()
            if word == 'syntax':
                self.expect('=')
                self.next()
                self.expect(';')
            elif word == 'package':
                fdp.package = self.next()
                self.expect(';')
            elif word == 'message':
                self.message(fdp.message_type.add())
            elif word == 'enum':
                self.enum(fdp.enum_type.add())
            else:
                raise ValueError('caffe_min.proto: unexpected %r' % word)
        return fdp

    def enum(self, enum):
        enum.name = self.next()
        self.expect('{')
        while True:
            name = self.next()
            if name == '}':
                return
            self.expect('=')
            enum.value.add(name=name, number=int(self.next()))
            self.expect(';')

    def message(self, msg):
        msg.name = self.next()
        self.expect('{')
        while True:
            word = self.next()
            if word == '}':
                return
            if word == 'message':
                self.message(msg.nested_type.add())
            elif word == 'enum':
                self.enum(msg.enum_type.add())
            else:
                self.field(msg.field.add(), word)

    def field(self, field, label):
        field.label = _LABELS[label]
        type_name = self.next()
        field.name = self.next()
        self.expect('=')
        field.number = int(self.next())
        if type_name in _SCALARS:
            field.type = _SCALARS[type_name]
        else:
            field.type_name = type_name  # resolved after the whole file
        token = self.next()
        if token == '[':
            while token != ']':
                option = self.next()
                self.expect('=')
                value = self.next().strip('"\'')
                if option == 'default':
                    field.default_value = value
                elif option == 'packed':
                    field.options.packed = value == 'true'
                token = self.next()
            token = self.next()
        if token != ';':
            raise ValueError('caffe_min.proto: field %s: expected ;'
                             % field.name)


def _resolve_types(fdp):
    """Give each message/enum field its type and fully-qualified type name."""
    kinds = {}

    def collect(scope, messages, enums):
        for enum in enums:
            kinds[scope + enum.name] = _FDP.TYPE_ENUM
        for msg in messages:
            kinds[scope + msg.name] = _FDP.TYPE_MESSAGE
            collect(scope + msg.name + '.', msg.nested_type, msg.enum_type)

    root = '.' + fdp.package + '.'
    collect(root, fdp.message_type, fdp.enum_type)

    def resolve(scope, messages):
        for msg in messages:
            inner = scope + msg.name + '.'
            for field in msg.field:
                if not field.type_name:
                    continue
                for candidate in (inner + field.type_name,
                                  root + field.type_name):
                    if candidate in kinds:
                        field.type_name = candidate
                        field.type = kinds[candidate]
                        break
                else:
                    raise ValueError('caffe_min.proto: unknown type %s'
                                     % field.type_name)
            resolve(inner, msg.nested_type)

    resolve(root, fdp.message_type)
    return fdp


def load_file_descriptor(path=PROTO_PATH):
    """Parse ``path`` into a ``FileDescriptorProto`` (types resolved)."""
    with open(path) as f:
        return _resolve_types(_Parser(_tokens(f.read())).file())


def _message_classes(fdp):
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get_class = getattr(message_factory, 'GetMessageClass', None)
    if get_class is None:  # protobuf < 4.22
        get_class = message_factory.MessageFactory(pool).GetPrototype
    return {msg.name: get_class(pool.FindMessageTypeByName(
        fdp.package + '.' + msg.name)) for msg in fdp.message_type}


_CLASSES = _message_classes(load_file_descriptor())
NetParameter = _CLASSES['NetParameter']
LayerParameter = _CLASSES['LayerParameter']
V1LayerParameter = _CLASSES['V1LayerParameter']
BlobProto = _CLASSES['BlobProto']
BlobShape = _CLASSES['BlobShape']
