// imagekernel.cpp - a C++ library with an extern "C" API, for taskfleet's native examples.
//
// C++ exceptions must never cross an extern "C" boundary: unwinding through the ctypes caller is
// undefined behaviour (in practice std::terminate, which aborts the whole worker process). Every
// exported function therefore runs its body inside `guarded`, which catches everything and turns
// it into a status code plus a message in the caller's (char *err, size_t errlen) buffer.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// Status codes. 1 and 2 mean the request itself is wrong (terminal); 3 and 4 may pass on a retry.
enum Status : int { kOk = 0, kInvalidArgument = 1, kUnknownKernel = 2, kOutOfMemory = 3, kInternal = 4 };

struct Kernel {
    int weights[9];
    int divisor;
};

const std::map<std::string, Kernel>& kernels() {
    static const std::map<std::string, Kernel> table = {
        {"box", {{1, 1, 1, 1, 1, 1, 1, 1, 1}, 9}},
        {"sharpen", {{0, -1, 0, -1, 5, -1, 0, -1, 0}, 1}},
        {"edge", {{-1, -1, -1, -1, 8, -1, -1, -1, -1}, 1}},
    };
    return table;
}

void write_error(char* err, std::size_t errlen, const char* message) {
    if (err != nullptr && errlen > 0) {
        std::snprintf(err, errlen, "%s", message);
    }
}

// Runs body and maps any exception to a status code + message: the boundary pattern.
template <typename Body>
int guarded(char* err, std::size_t errlen, Body body) noexcept {
    try {
        body();
        return kOk;
    } catch (const std::invalid_argument& e) {
        write_error(err, errlen, e.what());
        return kInvalidArgument;
    } catch (const std::out_of_range& e) {
        write_error(err, errlen, e.what());
        return kUnknownKernel;
    } catch (const std::bad_alloc&) {
        write_error(err, errlen, "out of memory");
        return kOutOfMemory;
    } catch (const std::exception& e) {
        write_error(err, errlen, e.what());
        return kInternal;
    } catch (...) {
        write_error(err, errlen, "unknown C++ exception");
        return kInternal;
    }
}

int divide_rounded(int sum, int divisor) {
    // Round half away from zero, the same on both signs (the Python reference does the same).
    return sum >= 0 ? (sum + divisor / 2) / divisor : -((-sum + divisor / 2) / divisor);
}

void convolve3(const Kernel& k, const std::uint8_t* src, std::uint8_t* dst, int width, int height) {
    for (int y = 0; y < height; y++) {
        for (int x = 0; x < width; x++) {
            int sum = 0;
            for (int dy = -1; dy <= 1; dy++) {
                // Edges are clamped: the border pixel stands in for the missing neighbours.
                int yy = y + dy < 0 ? 0 : (y + dy >= height ? height - 1 : y + dy);
                for (int dx = -1; dx <= 1; dx++) {
                    int xx = x + dx < 0 ? 0 : (x + dx >= width ? width - 1 : x + dx);
                    sum += k.weights[(dy + 1) * 3 + (dx + 1)] * src[yy * width + xx];
                }
            }
            int value = divide_rounded(sum, k.divisor);
            dst[y * width + x] = static_cast<std::uint8_t>(value < 0 ? 0 : (value > 255 ? 255 : value));
        }
    }
}

}  // namespace

extern "C" {

// Applies the named 3x3 kernel ("box", "sharpen", "edge") to a width x height 8-bit grayscale
// image in src, writing the result to dst. src and dst must not overlap.
int tf_convolve3(const char* kernel, const std::uint8_t* src, std::size_t src_len, std::uint8_t* dst,
                 std::size_t dst_len, int width, int height, char* err, std::size_t errlen) {
    return guarded(err, errlen, [&] {
        if (width < 1 || height < 1) {
            throw std::invalid_argument("width and height must be >= 1, got " +
                                        std::to_string(width) + "x" + std::to_string(height));
        }
        const std::size_t pixels = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
        if (src_len < pixels || dst_len < pixels) {
            throw std::invalid_argument("a " + std::to_string(width) + "x" + std::to_string(height) +
                                        " image needs " + std::to_string(pixels) +
                                        " bytes in and out, got " + std::to_string(src_len) +
                                        " and " + std::to_string(dst_len));
        }
        // std::map::at throws std::out_of_range for an unknown name: a real C++ exception that
        // `guarded` turns into kUnknownKernel.
        const Kernel& k = kernels().at(kernel);
        convolve3(k, src, dst, width, height);
    });
}

// Box blur: tf_convolve3 with the "box" kernel.
int tf_box_blur3(const std::uint8_t* src, std::size_t src_len, std::uint8_t* dst, std::size_t dst_len,
                 int width, int height, char* err, std::size_t errlen) {
    return tf_convolve3("box", src, src_len, dst, dst_len, width, height, err, errlen);
}

// Test aid: throws a std::runtime_error carrying message inside C++; the boundary returns
// kInternal with the message. Shows the pattern works for exceptions the caller never expected.
int tf_test_aid_throw(const char* message, char* err, std::size_t errlen) {
    return guarded(err, errlen, [&] {
        // A live object with a destructor: unwinding frees it before `guarded` catches, so the
        // pattern leaks nothing even when a C++ library throws from deep inside.
        std::vector<int> scratch(1024);
        throw std::runtime_error(std::string("thrown inside C++: ") + message);
    });
}

}  // extern "C"
