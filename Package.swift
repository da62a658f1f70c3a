// swift-tools-version:6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

// Linux only (Debian 12 here): the AMQP client links librabbitmq-c, and the services use glibc's malloc_trim.
let package = Package(
    name: "swift-chat",
    products: [
        .executable(name: "Gateway", targets: ["Gateway"]),
        .executable(name: "Persistence", targets: ["Persistence"]),
        .executable(name: "Rooms", targets: ["Rooms"]),
        .executable(name: "LoadGenerator", targets: ["LoadGenerator"]),
        .executable(name: "BroadcastServer", targets: ["BroadcastServer"]),
        .executable(name: "FrameEncoding", targets: ["FrameEncoding"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // MARK: Shared modules
        .systemLibrary(
            name: "CRabbitMQ",
            path: "Shared/CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .target(
            name: "AMQPClient",
            dependencies: [
                "CRabbitMQ",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Shared/AMQPClient",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChatProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            path: "Shared/ChatProtocol",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChatWire",
            dependencies: ["AMQPClient", "ChatProtocol", "Presence", .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "NIOFoundationCompat", package: "swift-nio")],
            path: "Shared/ChatWire",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChannelLayer",
            dependencies: [
                "AMQPClient", "ChatProtocol", "ChatWire", "Presence",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Shared/ChannelLayer",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChatStorage",
            dependencies: [
                "ChatProtocol",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Shared/ChatStorage",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Presence",
            dependencies: ["ChatProtocol"],
            path: "Shared/Presence",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ServiceKit",
            dependencies: [
                "AMQPClient", "ChatProtocol",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Shared/ServiceKit",
            swiftSettings: swiftSettings
        ),

        // MARK: Services
        .target(
            name: "GatewayService",
            dependencies: [
                "AMQPClient", "ChannelLayer", "ChatProtocol", "ChatWire", "Presence", "ServiceKit",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ],
            path: "Services/Gateway/Sources/GatewayService",
            resources: [.embedInCode("HTTP/Resources/consult.html"), .embedInCode("HTTP/Resources/room.html"),
                        .embedInCode("HTTP/Resources/chat-socket.js")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "Gateway",
            dependencies: ["GatewayService", "ServiceKit"],
            path: "Services/Gateway/Sources/Gateway",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "PersistenceService",
            dependencies: [
                "AMQPClient", "ChannelLayer", "ChatProtocol", "ChatStorage", "ChatWire", "ServiceKit",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            path: "Services/Persistence/Sources/PersistenceService",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "Persistence",
            dependencies: ["PersistenceService", "ServiceKit"],
            path: "Services/Persistence/Sources/Persistence",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "RoomService",
            dependencies: [
                "AMQPClient", "ChannelLayer", "ChatProtocol", "ChatStorage", "ChatWire", "Presence", "ServiceKit",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            path: "Services/Rooms/Sources/RoomService",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "Rooms",
            dependencies: ["RoomService", "ServiceKit"],
            path: "Services/Rooms/Sources/Rooms",
            swiftSettings: swiftSettings
        ),

        // MARK: Benchmarks
        .executableTarget(
            name: "LoadGenerator",
            dependencies: [
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            path: "Benchmarks/LoadGenerator"
        ),
        .executableTarget(
            name: "FrameEncoding",
            dependencies: ["ChatProtocol", "ChatWire"],
            path: "Benchmarks/FrameEncoding"
        ),
        .executableTarget(
            name: "BroadcastServer",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            path: "Benchmarks/BroadcastServer"
        ),

        // MARK: Tests
        .testTarget(
            name: "AMQPClientTests",
            dependencies: ["AMQPClient", "ChannelLayer"],
            path: "Tests/AMQPClientTests",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ChatUnitTests",
            dependencies: [
                "ChatProtocol", "ChannelLayer", "ChatStorage", "ChatWire", "GatewayService", "PersistenceService", "Presence", "RoomService", "ServiceKit",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            path: "Tests/ChatUnitTests",
            swiftSettings: swiftSettings
        ),
    ]
)
