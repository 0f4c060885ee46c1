// A C++17 cppzmq DEALER client of switchyard's ZeroMQ tensor session: what a Tech
// Renaissance program would write to leave the file protocol for sockets.
// Each tensor travels as two frames: the 64-byte TSR header (as CpuBackend::export_tensor
// writes it) and the raw float32 data, sent without copying (zmq::buffer over the vector).
//
// usage: tensor_zmq_client <endpoint>     exit code 0 when every check passed

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

static int failures = 0;
#define CHECK(cond, what)                                                     \
    do {                                                                      \
        bool ok_ = (cond);                                                    \
        std::cout << (ok_ ? "PASS " : "FAIL ") << what << std::endl;          \
        if (!ok_) ++failures;                                                 \
    } while (0)

struct Tensor {
    std::vector<int32_t> shape;
    std::vector<float> data;
};

static std::string tsr_header(const Tensor& t) {
    char h[64] = {0};
    std::memcpy(h, "TSR!", 4);
    int32_t version = 1, header_size = 64, dtype = 1, ndim = static_cast<int32_t>(t.shape.size());
    std::memcpy(h + 4, &version, 4);
    std::memcpy(h + 8, &header_size, 4);
    std::memcpy(h + 16, &dtype, 4);
    std::memcpy(h + 20, &ndim, 4);
    for (int i = 0; i < 4; i++) {
        int32_t d = (i < 4 - ndim) ? 1 : t.shape[i - (4 - ndim)];
        std::memcpy(h + 24 + 4 * i, &d, 4);
    }
    int64_t total = static_cast<int64_t>(t.data.size());
    std::memcpy(h + 40, &total, 8);
    return std::string(h, 64);
}

static Tensor parse_tensor(const zmq::message_t& head, const zmq::message_t& data) {
    Tensor t;
    if (head.size() != 64 || std::memcmp(head.data(), "TSR!", 4) != 0) throw std::runtime_error("bad TSR header");
    int32_t dtype, ndim, dims[4];
    int64_t total;
    const char* h = static_cast<const char*>(head.data());
    std::memcpy(&dtype, h + 16, 4);
    std::memcpy(&ndim, h + 20, 4);
    std::memcpy(dims, h + 24, 16);
    std::memcpy(&total, h + 40, 8);
    if (dtype != 1 || data.size() != static_cast<size_t>(total) * 4) throw std::runtime_error("bad TSR data");
    for (int i = 4 - ndim; i < 4; i++) t.shape.push_back(dims[i]);
    t.data.resize(static_cast<size_t>(total));
    std::memcpy(t.data.data(), data.data(), data.size());
    return t;
}

// Sends {"id", "cmd", "params", "tensors"} + header/data frame pairs; returns the reply frames.
static std::vector<zmq::message_t> call(zmq::socket_t& sock, int id, const std::string& cmd, const std::string& params,
                                        const std::vector<std::pair<std::string, const Tensor*>>& tensors) {
    std::string tags;
    for (auto& [tag, _] : tensors) tags += (tags.empty() ? "\"" : ",\"") + tag + "\"";
    std::string head = "{\"id\": " + std::to_string(id) + ", \"cmd\": \"" + cmd + "\", \"params\": \"" + params +
                       "\", \"tensors\": [" + tags + "]}";
    std::vector<std::string> headers;
    headers.reserve(tensors.size());
    for (auto& [_, t] : tensors) headers.push_back(tsr_header(*t));
    bool more = !tensors.empty();
    sock.send(zmq::buffer(head), more ? zmq::send_flags::sndmore : zmq::send_flags::none);
    for (size_t i = 0; i < tensors.size(); ++i) {
        sock.send(zmq::buffer(headers[i]), zmq::send_flags::sndmore);
        const auto& v = tensors[i].second->data;
        zmq::message_t body(const_cast<float*>(v.data()), v.size() * sizeof(float), nullptr, nullptr);  // no copy
        sock.send(body, i + 1 < tensors.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
    std::vector<zmq::message_t> reply;
    if (!zmq::recv_multipart(sock, std::back_inserter(reply))) throw std::runtime_error("receive timed out");
    return reply;
}

static bool contains(const zmq::message_t& m, const std::string& s) {
    return m.to_string().find(s) != std::string::npos;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " <endpoint>" << std::endl;
        return 2;
    }
    zmq::context_t ctx;
    zmq::socket_t sock(ctx, zmq::socket_type::dealer);
    sock.set(zmq::sockopt::linger, 0);
    sock.set(zmq::sockopt::rcvtimeo, 5000);
    sock.connect(argv[1]);
    try {
        auto r = call(sock, 1, "hello", "cpp", {});
        CHECK(r.size() == 1 && contains(r[0], "\"params\":\"Hello Cpp\"") && contains(r[0], "\"status\":\"ok\""),
              "hello: " + r[0].to_string());

        Tensor a{{4, 3}, std::vector<float>(12, 1.5f)}, b{{3, 5}, std::vector<float>(15, 2.0f)};
        r = call(sock, 2, "matmul", "a,b", {{"a", &a}, {"b", &b}});
        CHECK(r.size() == 3 && contains(r[0], "\"params\":\"r\"") && contains(r[0], "\"status\":\"ok\""),
              "matmul reply header: " + r[0].to_string());
        if (r.size() == 3) {
            Tensor m = parse_tensor(r[1], r[2]);
            bool all9 = m.shape == std::vector<int32_t>({4, 5});
            for (float x : m.data) all9 = all9 && std::fabs(x - 9.0f) < 1e-5f;
            CHECK(all9, "matmul 4x3 @ 3x5 = 9.0");
        }

        r = call(sock, 3, "bogus", "", {});
        CHECK(r.size() == 1 && contains(r[0], "\"kind\":\"done\"") &&
                  contains(r[0], "error:Failed to process command bogus"), "unknown command: " + r[0].to_string());

        Tensor big{{1 << 18}, std::vector<float>(1 << 18, 0.5f)}, one{{1}, {1.0f}};
        auto start = std::chrono::steady_clock::now();
        const int n = 50;
        bool sums_ok = true;
        for (int i = 0; i < n; ++i) {
            r = call(sock, 10 + i, "add", "a,b", {{"a", &big}, {"b", &one}});
            sums_ok = sums_ok && r.size() == 3 && r[2].size() == big.data.size() * 4 &&
                      static_cast<const float*>(r[2].data())[12345] == 1.5f;
        }
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / n;
        CHECK(sums_ok, "1 MiB add x" + std::to_string(n) + " (" + std::to_string(ms) + " ms each)");
    } catch (const std::exception& e) {
        CHECK(false, std::string("exception: ") + e.what());
    }
    std::cout << (failures ? "FAILED " : "ALL PASSED ") << failures << std::endl;
    return failures ? 1 : 0;
}
