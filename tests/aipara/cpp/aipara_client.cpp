// A small stand-in for the aipara C++ client (plugins/aipara/src/common/tcp_zmq.cc),
// compiled by tests/aipara/test_aipara_cpp.py with cppzmq + libzmq. Socket setup follows
// the real client (PEERS.md section 1): REQ on the Rime state port with 100 ms
// send/receive timeouts, DEALER on the AI port with 5000 ms, LINGER 0, reconnect
// 1000..5000 ms, TCP keepalive (30 s idle, 3 probes, 10 s interval), HWM 100.
// Replies of several frames are joined with '\n' as the client does.
//
// usage: aipara_client <rime_endpoint> <ai_endpoint> [curve_cert_dir]
// Prints one line per reply: "RIME <json>" or "AI <json>", "TIMEOUT ...", "DONE".
// Between its first and second Rime request it waits for a line on stdin, so the
// test can queue a command for it in between.

#include <zmq.hpp>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

namespace {

std::int64_t NowMs() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

struct Curve {
  std::string client_public, client_secret, server_public;
};

std::optional<std::string> Field(const std::string& content, const std::string& name) {
  const std::string pattern = name + " = \"";
  auto pos = content.find(pattern);
  if (pos == std::string::npos) return std::nullopt;
  pos += pattern.size();
  auto end = content.find('"', pos);
  if (end == std::string::npos) return std::nullopt;
  return content.substr(pos, end - pos);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::optional<Curve> LoadCurve(const std::string& dir) {
  auto pub = Field(ReadFile(dir + "/client.key"), "public-key");
  auto sec = Field(ReadFile(dir + "/client_secret.key"), "secret-key");
  auto srv = Field(ReadFile(dir + "/server_public.key"), "public-key");
  if (!pub || !sec || !srv || pub->size() != 40 || sec->size() != 40 || srv->size() != 40) return std::nullopt;
  return Curve{*pub, *sec, *srv};
}

void Configure(zmq::socket_t& sock, int timeout_ms, const std::string& identity, const std::optional<Curve>& curve) {
  sock.set(zmq::sockopt::linger, 0);
  sock.set(zmq::sockopt::reconnect_ivl, 1000);
  sock.set(zmq::sockopt::reconnect_ivl_max, 5000);
  sock.set(zmq::sockopt::tcp_keepalive, 1);
  sock.set(zmq::sockopt::tcp_keepalive_idle, 30);
  sock.set(zmq::sockopt::tcp_keepalive_cnt, 3);
  sock.set(zmq::sockopt::tcp_keepalive_intvl, 10);
  sock.set(zmq::sockopt::sndhwm, 100);
  sock.set(zmq::sockopt::rcvhwm, 100);
  sock.set(zmq::sockopt::rcvtimeo, timeout_ms);
  sock.set(zmq::sockopt::sndtimeo, timeout_ms);
  sock.set(zmq::sockopt::routing_id, identity);
  if (curve) {
    sock.set(zmq::sockopt::curve_serverkey, curve->server_public);
    sock.set(zmq::sockopt::curve_publickey, curve->client_public);
    sock.set(zmq::sockopt::curve_secretkey, curve->client_secret);
  }
}

// Receive one message; several frames are joined with '\n'. nullopt on timeout.
std::optional<std::string> Receive(zmq::socket_t& sock) {
  std::string joined;
  bool first = true;
  while (true) {
    zmq::message_t frame;
    if (!sock.recv(frame, zmq::recv_flags::none)) return std::nullopt;
    if (!first) joined.push_back('\n');
    first = false;
    joined.append(frame.to_string());
    if (!frame.more()) return joined;
  }
}

class RimeChannel {
 public:
  RimeChannel(zmq::context_t& ctx, std::string endpoint, std::string identity, std::optional<Curve> curve)
      : ctx_(ctx), endpoint_(std::move(endpoint)), identity_(std::move(identity)), curve_(std::move(curve)) {
    Open();
  }

  // REQ lockstep with a 100 ms budget; on timeout the real client tears the socket
  // down and reconnects, and the next state update is sent on the new one.
  std::optional<std::string> Request(const std::string& body, int attempts) {
    for (int i = 0; i < attempts; ++i) {
      try {
        if (sock_->send(zmq::buffer(body), zmq::send_flags::none)) {
          if (auto reply = Receive(*sock_)) return reply;
        }
      } catch (const zmq::error_t& e) {
        std::cout << "ZMQERROR " << e.what() << std::endl;
      }
      std::cout << "TIMEOUT rime attempt " << i + 1 << std::endl;
      Open();
    }
    return std::nullopt;
  }

 private:
  void Open() {
    sock_.emplace(ctx_, zmq::socket_type::req);
    Configure(*sock_, 100, identity_, curve_);
    sock_->connect(endpoint_);
  }

  zmq::context_t& ctx_;
  std::string endpoint_, identity_;
  std::optional<Curve> curve_;
  std::optional<zmq::socket_t> sock_;
};

std::string StateJson(const char* type, std::int64_t now, const std::string& extra) {
  std::string json = std::string("{\"messege_type\":\"") + type + "\",\"is_composing\":false,\"timestamp\":" +
                     std::to_string(now) +
                     ",\"switches_option\":[{\"name\":\"ascii_punct\",\"type\":\"simple\",\"state\":false,\"state_index\":0}]"
                     ",\"properties\":[{\"name\":\"keepon_chat_trigger\",\"type\":\"string\",\"value\":\"\"}]";
  return json + extra + "}";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: aipara_client <rime_endpoint> <ai_endpoint> [curve_cert_dir]" << std::endl;
    return 2;
  }
  std::optional<Curve> curve;
  if (argc >= 4) {
    curve = LoadCurve(argv[3]);
    if (!curve) {
      std::cerr << "cannot load CURVE keys from " << argv[3] << std::endl;
      return 2;
    }
  }
  zmq::context_t ctx;
  const std::string client_id = "rime-cpp-" + std::to_string(NowMs());

  RimeChannel rime(ctx, argv[1], client_id + "-rime", curve);
  auto first = rime.Request(StateJson("state", NowMs(), ""), 20);
  if (!first) return 1;
  std::cout << "RIME " << *first << std::endl;

  std::string go;
  std::getline(std::cin, go);  // the test queues a command for us meanwhile

  auto second = rime.Request(
      StateJson("commit", NowMs(), ",\"current_app\":\"gedit\",\"commit_pinyin\":\"nihao\",\"commit_text\":\"\xe4\xbd\xa0\xe5\xa5\xbd\""),
      20);
  if (!second) return 1;
  std::cout << "RIME " << *second << std::endl;

  zmq::socket_t ai(ctx, zmq::socket_type::dealer);
  Configure(ai, 5000, client_id + "-000001", curve);
  ai.connect(argv[2]);
  const std::string convert =
      "{\"messege_type\":\"convert\",\"confirmed_pos_input\":\"nihaoshijie\",\"schema_name\":\"rime_ice\","
      "\"shuru_schema\":\"quanpin\",\"stream_mode\":true,\"timestamp\":" +
      std::to_string(NowMs()) + ",\"timeout\":5.0}";
  ai.send(zmq::buffer(convert), zmq::send_flags::none);
  while (true) {
    auto reply = Receive(ai);
    if (!reply) {
      std::cout << "TIMEOUT ai" << std::endl;
      return 1;
    }
    std::cout << "AI " << *reply << std::endl;
    if (reply->find("\"is_final\":true") != std::string::npos) break;
  }
  const std::string chat =
      "{\"messege_type\":\"chat\",\"commit_text\":\"hi\",\"assistant_id\":\"default\",\"timestamp\":" +
      std::to_string(NowMs()) + ",\"response_key\":\"cpp-1\"}";
  ai.send(zmq::buffer(chat), zmq::send_flags::none);
  if (auto reply = Receive(ai)) std::cout << "AI " << *reply << std::endl;
  std::cout << "DONE" << std::endl;
  return 0;
}
