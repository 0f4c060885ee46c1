// Plays Tech Renaissance's C++ PythonSession (src/utils/python_session.cpp, V1.20)
// file steps, and its CpuBackend::export_tensor / import_tensor TSR code, against a
// session server. Only the Tensor class is replaced by a small float32 struct.
//
// usage: tensor_session_client <root> <session_id> <server_script> [--basic]
//   --basic: hello + matmul + misbehaviour only (no two-result command)
// The server is launched the way the original does: std::system("python3 \"<script>\" <id> &").
// Exit code 0 when every check passed; each check prints one line.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

static int failures = 0;
#define CHECK(cond, what)                                                     \
    do {                                                                      \
        bool ok_ = (cond);                                                    \
        std::cout << (ok_ ? "PASS " : "FAIL ") << what << std::endl;          \
        if (!ok_) ++failures;                                                 \
    } while (0)

struct Tensor {  // float32 only, 0..4 dims
    std::vector<int32_t> shape;
    std::vector<float> data;
    static Tensor full(std::vector<int32_t> shape, float v) {
        Tensor t;
        t.shape = shape;
        size_t n = 1;
        for (auto d : shape) n *= static_cast<size_t>(d);
        t.data.assign(n, v);
        return t;
    }
    int64_t numel() const { return static_cast<int64_t>(data.size()); }
};

class PythonSession {
public:
    PythonSession(const std::string& root, const std::string& script, const std::string& session_id)
        : script_path_(script), session_id_(session_id) {
        session_dir_ = root + "/tr_session_" + session_id_;
        fs::create_directories(session_dir_);
        std::string request_file_name = session_dir_ + "/request.json";
        std::string response_file_name = session_dir_ + "/response.json";
        if (fs::exists(request_file_name)) std::remove(request_file_name.c_str());
        if (fs::exists(response_file_name)) std::remove(response_file_name.c_str());
    }

    const std::string& dir() const { return session_dir_; }

    void start(int warmup_time = 0) {
        std::string cmd = "python3 \"" + script_path_ + "\" " + session_id_ + " &";
        int ret = std::system(cmd.c_str());
        if (ret != 0) throw std::runtime_error("Failed to start Python script");
        running_ = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));  // original: 1000
        write_status_file("ready");
        std::this_thread::sleep_for(std::chrono::milliseconds(warmup_time));
    }

    bool is_alive() {
        if (!running_) return false;
        std::ifstream file(session_dir_ + "/status.txt");
        if (file) {
            std::string status;
            std::getline(file, status);
            if (status == "terminated" || status.find("error:") == 0) {
                running_ = false;
                return false;
            }
        }
        return true;
    }

    std::string status() const {
        std::ifstream file(session_dir_ + "/status.txt");
        std::string status;
        if (file) std::getline(file, status);
        return status;
    }

    void send_request(const std::string& msg) const {
        std::string request_file_temp = session_dir_ + "/request.tmp";
        std::string request_file = session_dir_ + "/request.json";
        std::ofstream(request_file_temp) << msg;
        std::error_code ec;
        fs::rename(request_file_temp, request_file, ec);
        if (ec) throw std::runtime_error("[PythonSession::send_request] rename failed");
    }

    void please_exit(uint32_t timeout_ms) {
        if (!wait_until_ready(timeout_ms)) std::cout << "WARNING: Write timeout" << std::endl;
        send_request(R"({"cmd": "exit"})");
    }

    bool is_ready() const { return !fs::exists(session_dir_ + "/request.json"); }

    bool wait_until_ready(uint32_t timeout_ms) const {
        return poll_with_backoff([&] { return !fs::exists(session_dir_ + "/request.json"); }, timeout_ms);
    }

    bool wait_until_ok(uint32_t timeout_ms) const {
        return poll_with_backoff([&] { return fs::exists(session_dir_ + "/response.json"); }, timeout_ms);
    }

    std::string read_response() const {
        std::string file_name = session_dir_ + "/response.json";
        std::ifstream in(file_name);
        if (!in) return "";
        std::string json_str((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        in.close();
        const std::string key = "\"params\":";
        size_t pos = json_str.find(key);
        if (pos == std::string::npos) {
            std::remove(file_name.c_str());
            return "";
        }
        pos += key.length();
        while (pos < json_str.size() && json_str[pos] != '"') ++pos;
        if (pos >= json_str.size()) {
            std::remove(file_name.c_str());
            return "";
        }
        ++pos;
        size_t end = pos;
        while (end < json_str.size()) {
            if (json_str[end] == '"') {
                if (end == 0 || json_str[end - 1] != '\\') break;
            }
            ++end;
        }
        std::string params = json_str.substr(pos, end - pos);
        std::remove(file_name.c_str());
        return params;
    }

    std::string fetch_response(const std::string& msg, uint32_t timeout_ms) const {
        if (!wait_until_ready(timeout_ms)) {
            std::cout << "[PythonSession::fetch_response] WARNING: Write timeout" << std::endl;
            return "";
        }
        send_request(msg);
        if (!wait_until_ok(timeout_ms)) {
            std::cout << "[PythonSession::fetch_response] WARNING: Read timeout" << std::endl;
            return "";
        }
        return read_response();
    }

    Tensor fetch_tensor(const std::string& msg, uint32_t timeout_ms) const {
        std::string response = fetch_response(msg, timeout_ms);
        if (response.empty()) throw std::runtime_error("Failed to get tensor response");
        std::string result_path = session_dir_ + "/" + response + ".tsr";
        if (!wait_for_file(result_path, timeout_ms))
            throw std::runtime_error("Timeout waiting for tensor file: " + result_path);
        return import_tensor(result_path);
    }

    Tensor calculate(const std::string& msg, const Tensor& a, const Tensor& b, uint32_t timeout_ms) const {
        send_tensor(a, "a");
        send_tensor(b, "b");
        return fetch_tensor(R"({"cmd": ")" + msg + R"(", "params": "a,b"})", timeout_ms);
    }

    void send_tensor(const Tensor& tensor, const std::string& tag) const {
        export_tensor(tensor, session_dir_ + "/" + tag + ".tsr");
    }

    bool wait_for_file(const std::string& file_path, uint32_t timeout_ms) const {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        while (std::chrono::steady_clock::now() < deadline) {
            if (fs::exists(file_path)) {
                std::ifstream file(file_path, std::ios::binary | std::ios::ate);
                if (file.tellg() > 0) return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        return false;
    }

    // CpuBackend::export_tensor, field by field.
    static void export_tensor(const Tensor& tensor, const std::string& filename) {
        std::ofstream file(filename, std::ios::binary);
        if (!file.is_open()) throw std::runtime_error("Failed to open file for writing: " + filename);
        const char MAGIC_NUMBER[4] = {'T', 'S', 'R', '!'};
        file.write(MAGIC_NUMBER, 4);
        int32_t version = 1, header_size = 64, reserved = 0;
        file.write(reinterpret_cast<const char*>(&version), 4);
        file.write(reinterpret_cast<const char*>(&header_size), 4);
        file.write(reinterpret_cast<const char*>(&reserved), 4);
        int32_t dtype_value = 1;  // FP32
        file.write(reinterpret_cast<const char*>(&dtype_value), 4);
        int32_t ndim = static_cast<int32_t>(tensor.shape.size());
        file.write(reinterpret_cast<const char*>(&ndim), 4);
        int32_t dims[4];
        for (int i = 0; i < 4; i++) dims[i] = (i < 4 - ndim) ? 1 : tensor.shape[i - (4 - ndim)];
        file.write(reinterpret_cast<const char*>(dims), sizeof(dims));
        int64_t total_elements = tensor.numel();
        file.write(reinterpret_cast<const char*>(&total_elements), 8);
        int64_t reserved_0 = 0, reserved_1 = 0;
        file.write(reinterpret_cast<const char*>(&reserved_0), 8);
        file.write(reinterpret_cast<const char*>(&reserved_1), 8);
        file.write(reinterpret_cast<const char*>(tensor.data.data()), tensor.data.size() * sizeof(float));
    }

    // CpuBackend::import_tensor's checks, for FP32.
    static Tensor import_tensor(const std::string& filename) {
        std::ifstream file(filename, std::ios::binary);
        if (!file.is_open()) throw std::runtime_error("Failed to open file for reading: " + filename);
        struct {
            char magic[4];
            int32_t version, header_size, reserved, dtype, ndim, dims[4];
            int64_t total_elements, reserved_0, reserved_1;
        } header;
        static_assert(sizeof(header) == 64, "TSR header is 64 bytes");
        file.read(reinterpret_cast<char*>(&header), sizeof(header));
        if (file.gcount() != sizeof(header)) throw std::runtime_error("File too small: " + filename);
        if (std::memcmp(header.magic, "TSR!", 4) != 0) throw std::runtime_error("Invalid TSR magic");
        if (header.version != 1) throw std::runtime_error("Unsupported TSR version");
        if (header.dtype != 1) throw std::runtime_error("expected FP32 result");
        if (header.ndim < 0 || header.ndim > 4) throw std::runtime_error("Invalid ndim");
        int64_t calculated = int64_t(header.dims[0]) * header.dims[1] * header.dims[2] * header.dims[3];
        if (header.total_elements != calculated) throw std::runtime_error("Element count mismatch");
        file.seekg(0, std::ios::end);
        auto file_size = static_cast<size_t>(file.tellg());
        if (file_size != 64 + static_cast<size_t>(header.total_elements) * 4)
            throw std::runtime_error("File size mismatch");
        file.seekg(64, std::ios::beg);
        Tensor t;
        for (int i = 4 - header.ndim; i < 4; i++) t.shape.push_back(header.dims[i]);
        t.data.resize(static_cast<size_t>(header.total_elements));
        file.read(reinterpret_cast<char*>(t.data.data()), t.data.size() * sizeof(float));
        if (file.gcount() != static_cast<std::streamsize>(t.data.size() * sizeof(float)))
            throw std::runtime_error("Failed to read complete tensor data");
        return t;
    }

private:
    template <class Pred>
    static bool poll_with_backoff(Pred done, uint32_t timeout_ms) {
        uint32_t wait_count = 0;
        uint32_t shortest_quest_interval = 32;
        uint32_t quest_interval = shortest_quest_interval;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        bool wait_forever = timeout_ms == 0;
        while (wait_forever || std::chrono::steady_clock::now() < deadline) {
            if (done()) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(quest_interval));
            auto level = wait_count / 8;
            if (level >= 5) {
                quest_interval = shortest_quest_interval * 32;
            } else {
                quest_interval = shortest_quest_interval * (1 << level);
                wait_count++;
            }
        }
        return false;
    }

    void write_status_file(const std::string& status) {
        std::ofstream file(session_dir_ + "/status.txt");
        if (file) file << status;
    }

    std::string script_path_, session_id_, session_dir_;
    bool running_ = false;
};

static bool all_equal(const Tensor& t, float v) {
    for (float x : t.data)
        if (std::fabs(x - v) > 1e-5f) return false;
    return !t.data.empty();
}

static std::vector<std::string> split_commas(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (true) {
        size_t comma = s.find(',', start);
        out.push_back(s.substr(start, comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        std::cerr << "usage: " << argv[0] << " <root> <session_id> <script> [--basic]" << std::endl;
        return 2;
    }
    bool basic = argc > 4 && std::string(argv[4]) == "--basic";
    PythonSession session(argv[1], argv[3], argv[2]);
    session.start();
    CHECK(session.wait_until_ready(5000), "wait_until_ready");

    CHECK(session.fetch_response(R"({"cmd": "hello", "params": "world"})", 5000) == "Hello World", "hello (JSON)");
    CHECK(session.fetch_response("hello tech renaissance", 5000) == "Hello Tech Renaissance", "hello (plain text)");

    try {
        Tensor r = session.calculate("matmul", Tensor::full({4, 3}, 1.5f), Tensor::full({3, 5}, 2.0f), 5000);
        CHECK(r.shape == std::vector<int32_t>({4, 5}) && all_equal(r, 9.0f), "matmul 4x3 @ 3x5 = 9.0");
    } catch (const std::exception& e) {
        CHECK(false, std::string("matmul threw ") + e.what());
    }
    CHECK(!fs::exists(session.dir() + "/a.tsr") && !fs::exists(session.dir() + "/b.tsr"), "inputs consumed");

    if (!basic) {
        session.send_tensor(Tensor::full({2, 3, 4}, 5.0f), "a");
        session.send_tensor(Tensor::full({2, 3, 4}, 2.0f), "b");
        std::string tags = session.fetch_response(R"({"cmd": "sum_diff", "params": "a,b"})", 5000);
        CHECK(tags == "r0,r1", "two results answer r0,r1 (got '" + tags + "')");
        auto names = split_commas(tags);
        if (names.size() == 2) {
            try {
                for (auto& name : names) CHECK(session.wait_for_file(session.dir() + "/" + name + ".tsr", 5000), name + ".tsr exists");
                Tensor s = PythonSession::import_tensor(session.dir() + "/" + names[0] + ".tsr");
                Tensor d = PythonSession::import_tensor(session.dir() + "/" + names[1] + ".tsr");
                CHECK(s.shape == std::vector<int32_t>({2, 3, 4}) && all_equal(s, 7.0f), "r0 = a + b");
                CHECK(d.shape == std::vector<int32_t>({2, 3, 4}) && all_equal(d, 3.0f), "r1 = a - b");
            } catch (const std::exception& e) {
                CHECK(false, std::string("two results threw ") + e.what());
            }
        }
    }

    // Misbehaving client: unknown command, truncated TSR, missing tensor file.
    CHECK(session.fetch_response(R"({"cmd": "bogus", "params": "x"})", 400).empty(), "unknown command: no response");
    CHECK(session.status() == "error:Failed to process command bogus", "unknown command: status '" + session.status() + "'");
    CHECK(!session.is_alive(), "is_alive() is false on an error status, as the C++ client reads it");
    CHECK(session.wait_until_ready(2000), "unknown command: request consumed");

    {
        PythonSession::export_tensor(Tensor::full({8, 8}, 1.0f), session.dir() + "/a.tsr");
        fs::resize_file(session.dir() + "/a.tsr", 64 + 100);  // cut the data short
        session.send_tensor(Tensor::full({8, 8}, 1.0f), "b");
        CHECK(session.fetch_response(R"({"cmd": "matmul", "params": "a,b"})", 400).empty(), "truncated TSR: no response");
        std::string st = session.status();
        CHECK(st.rfind("error:", 0) == 0 && st.find("length") != std::string::npos, "truncated TSR: status '" + st + "'");
    }
    {
        session.send_tensor(Tensor::full({2, 2}, 1.0f), "a");
        std::remove((session.dir() + "/nope.tsr").c_str());
        CHECK(session.fetch_response(R"({"cmd": "matmul", "params": "a,nope"})", 400).empty(), "missing tensor: no response");
        std::string st = session.status();
        CHECK(st.rfind("error:", 0) == 0 && st.find("nope") != std::string::npos, "missing tensor: status '" + st + "'");
    }

    CHECK(session.fetch_response(R"({"cmd": "hello", "params": "again"})", 5000) == "Hello Again", "still serving after bad input");
    CHECK(session.status() == "ready", "status back to ready");

    session.please_exit(5000);
    bool terminated = false;
    for (int i = 0; i < 100 && !terminated; ++i) {
        terminated = session.status() == "terminated";
        if (!terminated) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    CHECK(terminated, "exit: status terminated");
    std::cout << (failures ? "FAILED " : "ALL PASSED ") << failures << std::endl;
    return failures ? 1 : 0;
}
