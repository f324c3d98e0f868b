// Boost.Asio and Boost.Beast in separate compilation mode: their implementation is compiled here,
// once, instead of in every translation unit that includes them (halves build times).
#include <utility>  // boost 1.74 asio/awaitable.hpp uses std::exchange without including it
#include <boost/asio/impl/src.hpp>
#include <boost/beast/src.hpp>
