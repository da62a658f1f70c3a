import GatewayService
import ServiceKit

let logger = ServiceLogging.logger(label: "chat.gateway")
await ServiceLogging.runMain(logger) {
    let configuration = try GatewayConfiguration.fromEnvironment()
    let application = try await buildApplication(configuration, logger: logger)
    logger.info("gateway listening", metadata: ["url": "http://\(configuration.host):\(configuration.port)/chat/"])
    try await application.run()
}
