import { DescField, DescMessage, ScalarType } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';

/**
 * cairn carries 64-bit integer fields as JavaScript numbers (ts-proto forceLong=number), so a
 * value beyond 2^53 - 1 cannot be represented exactly and is refused as INVALID_ARGUMENT
 * rather than rounded. These are the bounds, inclusive.
 */
export const MAX_SUPPORTED_INTEGER = BigInt(Number.MAX_SAFE_INTEGER);
export const MIN_SUPPORTED_INTEGER = BigInt(Number.MIN_SAFE_INTEGER);

/** Nested messages deeper than this are not searched (protobuf's own default recursion limit). */
const MAX_SEARCH_DEPTH = 100;

const READ_64: Partial<Record<ScalarType, { wireType: WireType; read: (reader: BinaryReader) => bigint | string }>> = {
  [ScalarType.UINT64]: { wireType: WireType.Varint, read: (r) => r.uint64() },
  [ScalarType.INT64]: { wireType: WireType.Varint, read: (r) => r.int64() },
  [ScalarType.SINT64]: { wireType: WireType.Varint, read: (r) => r.sint64() },
  [ScalarType.FIXED64]: { wireType: WireType.Bit64, read: (r) => r.fixed64() },
  [ScalarType.SFIXED64]: { wireType: WireType.Bit64, read: (r) => r.sfixed64() },
};

/**
 * Walks the wire bytes of a `message` and describes the first 64-bit integer field whose
 * value is beyond what cairn supports, e.g. "field limit (3) = 18446744073709551615 is above
 * the largest supported value 9007199254740991". Undefined when there is none, or when the
 * bytes are not valid protobuf (the decoder's own error then says more).
 */
export function findUnsupportedInteger(message: DescMessage, bytes: Uint8Array): string | undefined {
  try {
    return searchMessage(message, bytes, '', 0);
  } catch {
    return undefined;
  }
}

function searchMessage(message: DescMessage, bytes: Uint8Array, prefix: string, depth: number): string | undefined {
  if (depth > MAX_SEARCH_DEPTH) return undefined;
  const reader = new BinaryReader(bytes);
  const repeats = new Map<number, number>();
  while (reader.pos < reader.len) {
    const [number, wireType] = reader.tag();
    const field = message.fields.find((f) => f.number === number);
    if (!field) {
      reader.skip(wireType, number);
      continue;
    }
    const occurrence = repeats.get(number) ?? 0;
    repeats.set(number, occurrence + 1);
    const found = searchField(field, reader, wireType, field.fieldKind === 'list' ? `${prefix}${field.name}[${occurrence}]` : prefix + field.name, depth);
    if (found) return found;
  }
  return undefined;
}

function searchField(field: DescField, reader: BinaryReader, wireType: WireType, path: string, depth: number): string | undefined {
  const nested = field.fieldKind === 'message' || (field.fieldKind === 'list' && field.listKind === 'message') ? field.message : undefined;
  if (nested && wireType === WireType.LengthDelimited) return searchMessage(nested, reader.bytes(), `${path}.`, depth + 1);
  const scalar = field.fieldKind === 'scalar' || (field.fieldKind === 'list' && field.listKind === 'scalar') ? field.scalar : undefined;
  const codec = scalar === undefined ? undefined : READ_64[scalar];
  if (!codec) {
    reader.skip(wireType, field.number);
    return undefined;
  }
  if (wireType === codec.wireType) return describe(path, field.number, BigInt(codec.read(reader)));
  if (field.fieldKind === 'list' && wireType === WireType.LengthDelimited) {
    // A packed repeated field: its values one after another in one length-delimited run.
    const packed = new BinaryReader(reader.bytes());
    for (let i = 0; packed.pos < packed.len; i++) {
      const found = describe(`${path.replace(/\[\d+\]$/, '')}[${i}]`, field.number, BigInt(codec.read(packed)));
      if (found) return found;
    }
    return undefined;
  }
  reader.skip(wireType, field.number);
  return undefined;
}

function describe(path: string, number: number, value: bigint): string | undefined {
  if (value > MAX_SUPPORTED_INTEGER) return `field ${path} (${number}) = ${value} is above the largest supported value ${MAX_SUPPORTED_INTEGER}`;
  if (value < MIN_SUPPORTED_INTEGER) return `field ${path} (${number}) = ${value} is below the smallest supported value ${MIN_SUPPORTED_INTEGER}`;
  return undefined;
}
