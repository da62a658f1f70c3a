import NIOCore

/// Why a wire body could not be read: the sender and the reader disagree, or the body was cut or forged.
package enum WireError: Error, Equatable {
    /// The AMQP `type` names no case of the queue's enum.
    case unknownType(String?)
    /// The body ended inside a field.
    case truncated
    /// A length, count or version that cannot be right.
    case malformed(String)
}

/// Appends the binary fields of the wire protocol to a `ByteBuffer`: integers big-endian, strings as a 32-bit
/// byte count and their UTF-8, an optional as a presence byte. Hand-written rather than JSON: the hot path's
/// bodies are encoded once and decoded once per hop (docs/benchmarks.md, "Wire encoding").
package struct WireWriter {
    package var buffer: ByteBuffer

    package init(capacity: Int = 256) {
        buffer = ByteBufferAllocator().buffer(capacity: capacity)
    }

    package mutating func write(_ value: UInt8) { buffer.writeInteger(value) }
    package mutating func write(_ value: UInt32) { buffer.writeInteger(value) }
    package mutating func write(_ value: Int64) { buffer.writeInteger(value) }
    package mutating func write(count: Int) { buffer.writeInteger(UInt32(clamping: count)) }

    package mutating func write(_ string: String) {
        let lengthIndex = buffer.writerIndex
        buffer.writeInteger(UInt32(0))
        let written = buffer.writeString(string)
        buffer.setInteger(UInt32(written), at: lengthIndex)
    }

    package mutating func write(bytes: ByteBuffer) {
        buffer.writeInteger(UInt32(bytes.readableBytes))
        var bytes = bytes
        buffer.writeBuffer(&bytes)
    }

    package mutating func write(_ value: String?) {
        if let value { write(UInt8(1)); write(value) } else { write(UInt8(0)) }
    }

    package mutating func write(_ value: Int64?) {
        if let value { write(UInt8(1)); write(value) } else { write(UInt8(0)) }
    }
}

/// Reads what ``WireWriter`` wrote, refusing a body that ends early or claims more than it holds.
package struct WireReader {
    package var buffer: ByteBuffer

    package init(_ buffer: ByteBuffer) {
        self.buffer = buffer
    }

    package mutating func readByte() throws(WireError) -> UInt8 {
        guard let value = buffer.readInteger(as: UInt8.self) else { throw .truncated }
        return value
    }

    package mutating func readInt64() throws(WireError) -> Int64 {
        guard let value = buffer.readInteger(as: Int64.self) else { throw .truncated }
        return value
    }

    /// A count of elements, each at least `minimumSize` bytes: a count the rest of the body cannot hold is refused
    /// before anything is allocated for it.
    package mutating func readCount(minimumSize: Int) throws(WireError) -> Int {
        guard let value = buffer.readInteger(as: UInt32.self) else { throw .truncated }
        let count = Int(value)
        guard count * max(1, minimumSize) <= buffer.readableBytes else { throw .malformed("count \(count) past the body's end") }
        return count
    }

    package mutating func readString() throws(WireError) -> String {
        guard let length = buffer.readInteger(as: UInt32.self) else { throw .truncated }
        guard Int(length) <= buffer.readableBytes, let string = buffer.readString(length: Int(length)) else { throw .truncated }
        return string
    }

    package mutating func readBytes() throws(WireError) -> ByteBuffer {
        guard let length = buffer.readInteger(as: UInt32.self) else { throw .truncated }
        guard let bytes = buffer.readSlice(length: Int(length)) else { throw .truncated }
        return bytes
    }

    package mutating func readOptionalString() throws(WireError) -> String? {
        switch try readByte() {
        case 0: return nil
        case 1: return try readString()
        case let other: throw .malformed("presence byte \(other)")
        }
    }

    package mutating func readOptionalInt64() throws(WireError) -> Int64? {
        switch try readByte() {
        case 0: return nil
        case 1: return try readInt64()
        case let other: throw .malformed("presence byte \(other)")
        }
    }

    /// Refuses trailing bytes: a body is read whole or not at all.
    package func finish() throws(WireError) {
        guard buffer.readableBytes == 0 else { throw .malformed("\(buffer.readableBytes) bytes after the end") }
    }
}
