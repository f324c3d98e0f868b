// ApiError: the one way a request fails. It carries what the client sees:
// {"error": {"message", "type", "param", "code"}} with an HTTP status.
#pragma once
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

namespace aicloud {

struct ApiError : std::runtime_error {
  int status;
  std::string type;   // invalid_request_error, authentication_error, permission_error, ...
  std::string code;   // machine-readable, e.g. "invalid_api_key", "not_found"; may be empty
  std::string param;  // the offending field, e.g. "name"; may be empty

  ApiError(int status, std::string type, std::string message, std::string code = {},
           std::string param = {})
      : std::runtime_error(std::move(message)),
        status(status), type(std::move(type)), code(std::move(code)), param(std::move(param)) {}

  nlohmann::json to_json() const;
};

// The common cases, so that every handler words them the same way.
ApiError invalid_field(std::string param, std::string message);      // 400
ApiError bad_request(std::string message, std::string code = {});    // 400
ApiError unauthorized(std::string message, std::string code = "invalid_api_key");  // 401
ApiError forbidden(std::string message, std::string code = "insufficient_permissions");  // 403
ApiError not_found(std::string what, std::string id);               // 404 "No such X: id"
ApiError conflict(std::string message, std::string code = "conflict");  // 409
ApiError internal_error(std::string message);                         // 500

}  // namespace aicloud
