// The socket and stream types of the HTTP server and the upstream pool, typed on the
// io_context's own executor rather than asio's type-erased any_io_executor, which is copied and
// destroyed on every operation (~2% of the gateway's CPU). Each io_context is run by one thread.
#pragma once
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/basic_stream.hpp>

namespace aicloud::http {

using IoExecutor = boost::asio::io_context::executor_type;
using TcpSocket = boost::asio::basic_stream_socket<boost::asio::ip::tcp, IoExecutor>;
using TcpStream = boost::beast::basic_stream<boost::asio::ip::tcp, IoExecutor>;

}  // namespace aicloud::http
