import CRabbitMQ
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

extension AMQPWorker.Failure {
    var asAMQPError: AMQPError {
        switch self {
        case .connection: .connectionLost
        case .refused(let code, let text, _): .brokerRefused(code: code, text: text)
        }
    }
}

/// C memory that lives for one library call: strings and tables copied out of Swift values
/// (`amqp_cstring_bytes` on a Swift String would dangle).
final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    func bytes(_ string: String) -> amqp_bytes_t {
        let utf8 = Array(string.utf8)
        if utf8.isEmpty { return amqp_empty_bytes }
        let pointer = malloc(utf8.count)!
        utf8.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: utf8.count) }
        allocations.append(pointer)
        return amqp_bytes_t(len: utf8.count, bytes: pointer)
    }

    func table(_ table: AMQPTable) -> amqp_table_t {
        if table.isEmpty { return amqp_empty_table }
        let entries = UnsafeMutablePointer<amqp_table_entry_t>.allocate(capacity: table.count)
        allocations.append(UnsafeMutableRawPointer(entries))
        for (index, (key, value)) in table.sorted(by: { $0.key < $1.key }).enumerated() {
            let field: amqp_field_value_t = switch value {
            case .string(let s): chat_field_utf8(bytes(s))
            case .int(let i): chat_field_i64(i)
            case .bool(let b): chat_field_bool(b ? 1 : 0)
            case .strings(let strings): array(strings)
            }
            (entries + index).initialize(to: amqp_table_entry_t(key: bytes(key), value: field))
        }
        return amqp_table_t(num_entries: Int32(table.count), entries: entries)
    }

    func array(_ strings: [String]) -> amqp_field_value_t {
        let entries = UnsafeMutablePointer<amqp_field_value_t>.allocate(capacity: max(1, strings.count))
        allocations.append(UnsafeMutableRawPointer(entries))
        for (index, string) in strings.enumerated() { (entries + index).initialize(to: chat_field_utf8(bytes(string))) }
        return chat_field_array(entries, Int32(strings.count))
    }

    func properties(_ p: AMQPProperties) -> amqp_basic_properties_t {
        var props = amqp_basic_properties_t()
        var flags: amqp_flags_t = 0
        if let v = p.contentType { props.content_type = bytes(v); flags |= CHAT_FLAG_CONTENT_TYPE }
        if let v = p.correlationID { props.correlation_id = bytes(v); flags |= CHAT_FLAG_CORRELATION_ID }
        if let v = p.replyTo { props.reply_to = bytes(v); flags |= CHAT_FLAG_REPLY_TO }
        if let v = p.messageID { props.message_id = bytes(v); flags |= CHAT_FLAG_MESSAGE_ID }
        if let v = p.type { props.type = bytes(v); flags |= CHAT_FLAG_TYPE }
        if let v = p.expiration { props.expiration = bytes(v); flags |= CHAT_FLAG_EXPIRATION }
        if p.persistent { props.delivery_mode = 2; flags |= CHAT_FLAG_DELIVERY_MODE }
        if !p.headers.isEmpty { props.headers = table(p.headers); flags |= CHAT_FLAG_HEADERS }
        props._flags = flags
        return props
    }

    func free() {
        for pointer in allocations { Glibc.free(pointer) }
        allocations.removeAll()
    }
}

extension String {
    init(amqpBytes bytes: amqp_bytes_t) {
        if bytes.len == 0 || bytes.bytes == nil {
            self = ""
        } else {
            self = String(decoding: UnsafeRawBufferPointer(start: bytes.bytes, count: bytes.len), as: UTF8.self)
        }
    }
}

extension AMQPProperties {
    init(amqp p: amqp_basic_properties_t) {
        func string(_ flag: amqp_flags_t, _ bytes: amqp_bytes_t) -> String? {
            p._flags & flag != 0 ? String(amqpBytes: bytes) : nil
        }
        var headers: AMQPTable = [:]
        if p._flags & CHAT_FLAG_HEADERS != 0, let entries = p.headers.entries {
            for index in 0..<Int(p.headers.num_entries) {
                var entry = entries[index]
                let key = String(amqpBytes: entry.key)
                let bytes = chat_field_as_bytes(&entry.value)
                if bytes.len > 0 || entry.value.kind == UInt8(ascii: "S") {
                    headers[key] = .string(String(amqpBytes: bytes))
                } else {
                    headers[key] = .int(chat_field_as_i64(&entry.value, 0))
                }
            }
        }
        self.init(
            contentType: string(CHAT_FLAG_CONTENT_TYPE, p.content_type),
            correlationID: string(CHAT_FLAG_CORRELATION_ID, p.correlation_id),
            replyTo: string(CHAT_FLAG_REPLY_TO, p.reply_to),
            messageID: string(CHAT_FLAG_MESSAGE_ID, p.message_id),
            type: string(CHAT_FLAG_TYPE, p.type),
            expiration: string(CHAT_FLAG_EXPIRATION, p.expiration),
            persistent: p._flags & CHAT_FLAG_DELIVERY_MODE != 0 && p.delivery_mode == 2,
            headers: headers)
    }
}
