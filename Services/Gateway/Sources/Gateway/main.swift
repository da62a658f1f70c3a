import GatewayService
import ServiceKit

var logger = ServiceLogging.logger(label: "chat.gateway")
await ServiceLogging.runMain(logger) {
    let configuration = try GatewayConfiguration.fromEnvironment()
    logger[metadataKey: "chat.gateway"] = .string(configuration.gatewayID)
    let application = try await buildApplication(configuration, logger: logger)
    logger.info("gateway listening", metadata: ["url": "http://\(configuration.host):\(configuration.port)/chat/"])
    try await application.run()
}
