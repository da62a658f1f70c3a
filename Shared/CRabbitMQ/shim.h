#ifndef CHAT_CRABBITMQ_SHIM_H
#define CHAT_CRABBITMQ_SHIM_H

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <amqp_framing.h>
#include <poll.h>
#include <sys/time.h>

/// amqp_login is variadic, which Swift cannot call: wrap the PLAIN mechanism.
static inline amqp_rpc_reply_t chat_amqp_login_plain(amqp_connection_state_t state,
                                                     const char *vhost,
                                                     int channel_max,
                                                     int frame_max,
                                                     int heartbeat,
                                                     const char *user,
                                                     const char *password) {
    return amqp_login(state, vhost, channel_max, frame_max, heartbeat,
                      AMQP_SASL_METHOD_PLAIN, user, password);
}

/// Frame payload accessors: the payload is a C union, awkward from Swift.
static inline amqp_method_number_t chat_frame_method_id(const amqp_frame_t *frame) {
    return frame->payload.method.id;
}
static inline void *chat_frame_method_decoded(const amqp_frame_t *frame) {
    return frame->payload.method.decoded;
}

/// Field value constructors for building argument and header tables.
static inline amqp_field_value_t chat_field_utf8(amqp_bytes_t bytes) {
    amqp_field_value_t v; v.kind = AMQP_FIELD_KIND_UTF8; v.value.bytes = bytes; return v;
}
static inline amqp_field_value_t chat_field_i64(int64_t i) {
    amqp_field_value_t v; v.kind = AMQP_FIELD_KIND_I64; v.value.i64 = i; return v;
}
static inline amqp_field_value_t chat_field_bool(int b) {
    amqp_field_value_t v; v.kind = AMQP_FIELD_KIND_BOOLEAN; v.value.boolean = b ? 1 : 0; return v;
}

static inline amqp_field_value_t chat_field_array(amqp_field_value_t *entries, int count) {
    amqp_field_value_t v; v.kind = AMQP_FIELD_KIND_ARRAY; v.value.array.num_entries = count; v.value.array.entries = entries; return v;
}

/// Reads a header's integer value (any integer kind) or returns `fallback`.
static inline int64_t chat_field_as_i64(const amqp_field_value_t *v, int64_t fallback) {
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: return v->value.i8;
    case AMQP_FIELD_KIND_U8: return v->value.u8;
    case AMQP_FIELD_KIND_I16: return v->value.i16;
    case AMQP_FIELD_KIND_U16: return v->value.u16;
    case AMQP_FIELD_KIND_I32: return v->value.i32;
    case AMQP_FIELD_KIND_U32: return v->value.u32;
    case AMQP_FIELD_KIND_I64: return v->value.i64;
    case AMQP_FIELD_KIND_U64: return (int64_t)v->value.u64;
    default: return fallback;
    }
}
/// Returns the bytes of a string-valued header, or an empty buffer.
static inline amqp_bytes_t chat_field_as_bytes(const amqp_field_value_t *v) {
    if (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES) return v->value.bytes;
    return amqp_empty_bytes;
}


/// Method ids and property flags as typed constants: the library's macros carry casts Swift cannot import.
static const amqp_method_number_t CHAT_BASIC_DELIVER = AMQP_BASIC_DELIVER_METHOD;
static const amqp_method_number_t CHAT_BASIC_ACK = AMQP_BASIC_ACK_METHOD;
static const amqp_method_number_t CHAT_BASIC_NACK = AMQP_BASIC_NACK_METHOD;
static const amqp_method_number_t CHAT_BASIC_RETURN = AMQP_BASIC_RETURN_METHOD;
static const amqp_method_number_t CHAT_BASIC_CANCEL = AMQP_BASIC_CANCEL_METHOD;
static const amqp_method_number_t CHAT_CHANNEL_CLOSE = AMQP_CHANNEL_CLOSE_METHOD;
static const amqp_method_number_t CHAT_CONNECTION_CLOSE = AMQP_CONNECTION_CLOSE_METHOD;
static const uint8_t CHAT_FRAME_METHOD = AMQP_FRAME_METHOD;
static const amqp_flags_t CHAT_FLAG_CONTENT_TYPE = AMQP_BASIC_CONTENT_TYPE_FLAG;
static const amqp_flags_t CHAT_FLAG_HEADERS = AMQP_BASIC_HEADERS_FLAG;
static const amqp_flags_t CHAT_FLAG_DELIVERY_MODE = AMQP_BASIC_DELIVERY_MODE_FLAG;
static const amqp_flags_t CHAT_FLAG_CORRELATION_ID = AMQP_BASIC_CORRELATION_ID_FLAG;
static const amqp_flags_t CHAT_FLAG_REPLY_TO = AMQP_BASIC_REPLY_TO_FLAG;
static const amqp_flags_t CHAT_FLAG_EXPIRATION = AMQP_BASIC_EXPIRATION_FLAG;
static const amqp_flags_t CHAT_FLAG_MESSAGE_ID = AMQP_BASIC_MESSAGE_ID_FLAG;
static const amqp_flags_t CHAT_FLAG_TYPE = AMQP_BASIC_TYPE_FLAG;

/// Sends channel.close-ok after the broker closed a channel (a refused topology call), so that the channel
/// number can be opened again.
static inline int chat_send_channel_close_ok(amqp_connection_state_t state, amqp_channel_t channel) {
    amqp_channel_close_ok_t ok;
    ok.dummy = 0;
    return amqp_send_method(state, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
}

/// queue.bind with no-wait set: the broker sends no bind-ok. A run of these followed by one ordinary bind is
/// confirmed by that bind's bind-ok (a channel's methods are handled in order; a failure closes the channel).
static inline int chat_queue_bind_nowait(amqp_connection_state_t state, amqp_channel_t channel, amqp_bytes_t queue,
                                         amqp_bytes_t exchange, amqp_bytes_t routing_key, amqp_table_t arguments) {
    amqp_queue_bind_t request;
    request.ticket = 0;
    request.queue = queue;
    request.exchange = exchange;
    request.routing_key = routing_key;
    request.nowait = 1;
    request.arguments = arguments;
    return amqp_send_method(state, channel, AMQP_QUEUE_BIND_METHOD, &request);
}

#endif
