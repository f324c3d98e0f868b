#include "util/error.h"

namespace aicloud {

nlohmann::json ApiError::to_json() const {
  nlohmann::json e = {{"message", what()}, {"type", type}};
  e["param"] = param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param);
  e["code"] = code.empty() ? nlohmann::json(nullptr) : nlohmann::json(code);
  return {{"error", e}};
}

ApiError invalid_field(std::string param, std::string message) {
  return ApiError(400, "invalid_request_error", std::move(message), "invalid_value", std::move(param));
}
ApiError bad_request(std::string message, std::string code) {
  return ApiError(400, "invalid_request_error", std::move(message), std::move(code));
}
ApiError unauthorized(std::string message, std::string code) {
  return ApiError(401, "authentication_error", std::move(message), std::move(code));
}
ApiError forbidden(std::string message, std::string code) {
  return ApiError(403, "permission_error", std::move(message), std::move(code));
}
ApiError not_found(std::string what, std::string id) {
  return ApiError(404, "invalid_request_error", "No such " + what + ": '" + id + "'", "not_found");
}
ApiError conflict(std::string message, std::string code) {
  return ApiError(409, "invalid_request_error", std::move(message), std::move(code));
}
ApiError internal_error(std::string message) {
  return ApiError(500, "server_error", std::move(message), "internal_error");
}

}  // namespace aicloud
