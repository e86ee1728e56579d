// Python bindings of the index engine (scan_fast._C). Only glue lives here: buffers in
// and out, the GIL released around every engine call. Input checks with friendly
// messages are in scan_fast/index.py; the engine re-checks what could corrupt memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "jpeg_check.hpp"
#include "regions.hpp"
#include "sample_set.hpp"
#include "shard.hpp"
#include "tar_headers.hpp"

namespace py = pybind11;
using scan_fast::CandidateRule;
using scan_fast::SampleSet;

#define STRINGIFY(x) #x
#define MACRO_STRINGIFY(x) STRINGIFY(x)

namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style>;

template <class Id>
void bind_id_ops(py::class_<SampleSet>& cls) {
  cls.def(
      "add",
      [](SampleSet& s, const CArray<Id>& ids) {
        py::gil_scoped_release nogil;
        s.add(ids.data(), static_cast<size_t>(ids.size()));
      },
      py::arg("ids").noconvert(), "Add ids (1-D, contiguous); all are bounds-checked first.");
  cls.def(
      "discard",
      [](SampleSet& s, const CArray<Id>& ids) {
        py::gil_scoped_release nogil;
        s.discard(ids.data(), static_cast<size_t>(ids.size()));
      },
      py::arg("ids").noconvert(), "Remove ids (1-D, contiguous); all are bounds-checked first.");
  cls.def(
      "contains",
      [](const SampleSet& s, const CArray<Id>& ids) {
        py::array_t<bool> out(ids.size());
        bool* dst = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          s.contains(ids.data(), static_cast<size_t>(ids.size()), dst);
        }
        return out;
      },
      py::arg("ids").noconvert(), "Membership of each id, as a bool array.");
}

// Sorted ids (members or non-members), uint32 when every id fits, else int64.
template <class Out, class Fill>
py::array filled_array(uint64_t size, Fill& fill) {
  py::array_t<Out> out(static_cast<py::ssize_t>(size));
  Out* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    fill(dst);
  }
  return out;
}

// Sorted ids (members or non-members): uint32 when every id fits, else int64.
template <class Fill>
py::array id_array(const SampleSet& s, uint64_t size, Fill fill) {
  return s.ids_fit_uint32() ? filled_array<uint32_t>(size, fill) : filled_array<int64_t>(size, fill);
}

CandidateRule make_rule(std::optional<uint64_t> k, std::optional<double> threshold) {
  CandidateRule rule;
  rule.by_threshold = threshold.has_value();
  rule.k = k.value_or(0);
  rule.threshold = threshold.value_or(0.0);
  return rule;
}

template <class T>
py::tuple batch_candidates(const CArray<T>& loss_a, const CArray<T>& loss_b, std::optional<uint64_t> k_ill,
                           std::optional<uint64_t> k_red, std::optional<double> abs_ill,
                           std::optional<double> abs_red, uint64_t seed, uint64_t stream) {
  const py::ssize_t batch = loss_a.size();
  if (loss_b.size() != batch) throw py::value_error("loss_a and loss_b differ in length");
  py::array_t<bool> ill(batch), red(batch);
  bool* ill_out = ill.mutable_data();
  bool* red_out = red.mutable_data();
  {
    py::gil_scoped_release nogil;
    scan_fast::batch_candidates(loss_a.data(), loss_b.data(), static_cast<size_t>(batch), make_rule(k_ill, abs_ill),
                                make_rule(k_red, abs_red), seed, stream, ill_out, red_out);
  }
  return py::make_tuple(std::move(ill), std::move(red));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = R"pbdoc(
        scan-fast index engine
        ----------------------

        .. currentmodule:: scan_fast._C

        .. autosummary::
           :toctree: _generate

           SampleSet
           batch_candidates
           shard_ids
           set_num_threads
           get_num_threads
    )pbdoc";

  py::class_<SampleSet> cls(m, "SampleSet", R"pbdoc(
        A set of sample ids in [0, num_samples), one bit per possible id.

        Use it through scan_fast.index.SampleSet, which validates arguments.
    )pbdoc");
  cls.def(py::init<uint64_t>(), py::arg("num_samples"))
      .def_property_readonly("num_samples", &SampleSet::num_samples)
      .def("__len__",
           [](const SampleSet& s) {
             py::gil_scoped_release nogil;
             return s.count();
           })
      .def("contains_one", [](const SampleSet& s, uint64_t id) { return s.contains(id); }, py::arg("id"))
      .def("clear", &SampleSet::clear, py::call_guard<py::gil_scoped_release>())
      .def("copy", [](const SampleSet& s) { return SampleSet(s); }, py::call_guard<py::gil_scoped_release>())
      .def("__eq__", &SampleSet::operator==, py::call_guard<py::gil_scoped_release>())
      .def("update", &SampleSet::update, py::arg("other"), py::call_guard<py::gil_scoped_release>())
      .def("intersection_update", &SampleSet::intersection_update, py::arg("other"),
           py::call_guard<py::gil_scoped_release>())
      .def("difference_update", &SampleSet::difference_update, py::arg("other"),
           py::call_guard<py::gil_scoped_release>())
      .def("sample", &SampleSet::sample, py::arg("k"), py::arg("seed"), py::arg("stream"),
           py::call_guard<py::gil_scoped_release>(), "Exactly k members, uniform without replacement.")
      .def(
          "to_array",
          [](const SampleSet& s) {
            uint64_t size;
            {
              py::gil_scoped_release nogil;
              size = s.count();
            }
            return id_array(s, size, [&s](auto* dst) { s.to_array(dst); });
          },
          "Sorted members.")
      .def(
          "complement",
          [](const SampleSet& s) {
            uint64_t size;
            {
              py::gil_scoped_release nogil;
              size = s.num_samples() - s.count();
            }
            return id_array(s, size, [&s](auto* dst) { s.complement(dst); });
          },
          "Sorted non-members.")
      .def(
          "shuffled_complement",
          [](const SampleSet& s, uint64_t seed, uint64_t stream) {
            uint64_t size;
            {
              py::gil_scoped_release nogil;
              size = s.num_samples() - s.count();
            }
            return id_array(s, size, [&](auto* dst) { s.shuffled_complement(dst, seed, stream); });
          },
          py::arg("seed"), py::arg("stream"), "A seeded uniform permutation of the non-members.")
      .def(
          "to_bytes",
          [](const SampleSet& s) {
            const size_t size = s.serialized_size();
            PyObject* raw = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
            if (raw == nullptr) throw py::error_already_set();
            auto out = py::reinterpret_steal<py::bytes>(raw);
            char* dst = PyBytes_AS_STRING(raw);
            {
              py::gil_scoped_release nogil;
              s.serialize(dst);
            }
            return out;
          },
          "Header (magic, version, num_samples, checksum) and the bitset words.")
      .def_static(
          "from_bytes",
          [](const py::buffer& data) {
            py::buffer_info info = data.request();
            if (info.ndim != 1 || info.itemsize != 1) throw py::type_error("from_bytes needs a 1-D byte buffer");
            const char* src = static_cast<const char*>(info.ptr);
            const size_t size = static_cast<size_t>(info.size);
            py::gil_scoped_release nogil;
            return SampleSet::deserialize(src, size);
          },
          py::arg("data"))
      .def_static(
          "from_words",
          [](uint64_t num_samples, const py::buffer& bits) {
            py::buffer_info info = bits.request();
            if (info.ndim != 1 || info.itemsize != 1) throw py::type_error("from_words needs a 1-D byte buffer");
            const char* src = static_cast<const char*>(info.ptr);
            const size_t size = static_cast<size_t>(info.size);
            py::gil_scoped_release nogil;
            return SampleSet::from_words(num_samples, src, size);
          },
          py::arg("num_samples"), py::arg("bits"), "The set whose packed bits (no header) are `bits`.");
  bind_id_ops<int64_t>(cls);
  bind_id_ops<uint32_t>(cls);
  bind_id_ops<int32_t>(cls);
  bind_id_ops<uint64_t>(cls);

  const char* candidates_doc = R"pbdoc(
        The per-batch SCAN candidate rule: (ill_mask, red_mask) over the batch positions.

        For each kind give k (count) or a threshold, not both; see
        scan_fast.schedule.candidates for the definition.
    )pbdoc";
  m.def("batch_candidates", &batch_candidates<float>, py::arg("loss_a").noconvert(), py::arg("loss_b").noconvert(),
        py::arg("k_ill"), py::arg("k_red"), py::arg("abs_ill"), py::arg("abs_red"), py::arg("seed"),
        py::arg("stream"), candidates_doc);
  m.def("batch_candidates", &batch_candidates<double>, py::arg("loss_a").noconvert(),
        py::arg("loss_b").noconvert(), py::arg("k_ill"), py::arg("k_red"), py::arg("abs_ill"), py::arg("abs_red"),
        py::arg("seed"), py::arg("stream"), candidates_doc);

  m.def(
      "shard_ids",
      [](const SampleSet& s, bool members, bool shuffle, uint64_t seed, uint64_t stream, uint64_t start,
         uint64_t step, uint64_t count) {
        py::array_t<int64_t> out(static_cast<py::ssize_t>(count));
        int64_t* dst = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          const scan_fast::RankSelect kept(s, members);
          scan_fast::shard_ids(kept, shuffle, seed, stream, start, step, count, dst);
        }
        return out;
      },
      py::arg("set"), py::arg("members"), py::arg("shuffle"), py::arg("seed"), py::arg("stream"), py::arg("start"),
      py::arg("step"), py::arg("count"), R"pbdoc(
        Ids at positions (start + j * step) mod K, j < count, of the kept ids (the set's
        members, or its non-members) in the keyed order of (seed, stream); int64.
    )pbdoc");

  m.def(
      "read_regions",
      [](const CArray<int32_t>& fds, const CArray<uint64_t>& offsets, const CArray<uint64_t>& sizes,
         py::array_t<uint8_t, py::array::c_style> out, const CArray<uint64_t>& out_offsets) {
        const auto count = static_cast<size_t>(fds.size());
        if (offsets.size() != fds.size() || sizes.size() != fds.size() || out_offsets.size() != fds.size()) {
          throw std::invalid_argument("fds, offsets, sizes and out_offsets must have one entry per region");
        }
        uint8_t* dst = out.mutable_data();
        const auto out_size = static_cast<size_t>(out.size());
        py::gil_scoped_release nogil;
        return scan_fast::read_regions(fds.data(), offsets.data(), sizes.data(), count, dst, out_size,
                                       out_offsets.data());
      },
      py::arg("fds").noconvert(), py::arg("offsets").noconvert(), py::arg("sizes").noconvert(),
      py::arg("out").noconvert(), py::arg("out_offsets").noconvert(), R"pbdoc(
        pread region k = (fds[k], offsets[k], sizes[k]) into out[out_offsets[k]:][:sizes[k]], for every k,
        with the GIL released. Returns -1 when all were read whole, else the first region its file did
        not hold whole (cut short). int32 fds, uint64 offsets, sizes and out_offsets, a writable uint8 out.
    )pbdoc");

  m.def(
      "find_sorted_pointers",
      [](int32_t fd, uint64_t table_offset, uint64_t count, const CArray<uint64_t>& queries) {
        const auto n = static_cast<py::ssize_t>(queries.size());
        py::array_t<int64_t> found(n);
        py::array_t<uint64_t> sizes(n);
        int64_t* found_data = found.mutable_data();
        uint64_t* sizes_data = sizes.mutable_data();
        {
          py::gil_scoped_release nogil;
          scan_fast::find_sorted_pointers(fd, table_offset, count, queries.data(), static_cast<size_t>(n), found_data,
                                          sizes_data);
        }
        return py::make_tuple(std::move(found), std::move(sizes));
      },
      py::arg("fd"), py::arg("table_offset"), py::arg("count"), py::arg("queries").noconvert(), R"pbdoc(
        (index int64, size uint64) of each query pointer in a .beton allocation table sorted by pointer
        (count records of three uint64 at table_offset of fd; -1 where absent), reading only the probed
        records with pread, the GIL released.
    )pbdoc");

  m.def(
      "list_tar",
      [](int32_t fd, uint64_t file_size) {
        scan_fast::TarListing listing;
        {
          py::gil_scoped_release nogil;
          listing = scan_fast::list_tar(fd, file_size);
        }
        py::list names;
        for (const auto& name : listing.names) names.append(py::bytes(name));
        py::array_t<uint64_t> offsets(static_cast<py::ssize_t>(listing.offsets.size()), listing.offsets.data());
        py::array_t<uint64_t> sizes(static_cast<py::ssize_t>(listing.sizes.size()), listing.sizes.data());
        return py::make_tuple(names, offsets, sizes, listing.end, listing.stop, listing.detail);
      },
      py::arg("fd"), py::arg("file_size"), R"pbdoc(
        The regular-file members of the tar file open as fd (file_size bytes), from its headers alone,
        read as Python's tarfile reads them: (names as bytes, data offsets uint64, sizes uint64, end, stop,
        detail), where the listing stopped at byte `end` because of `stop`: "end" (where tarfile stops
        quietly), "error" (a member cannot be read: detail) or "not_tar" (the first header: detail).
    )pbdoc");

  m.def(
      "jpeg_decode_error",
      [](py::bytes data) -> std::optional<std::string> {
        char* buffer = nullptr;
        Py_ssize_t size = 0;
        PyBytes_AsStringAndSize(data.ptr(), &buffer, &size);
        std::string error;
        {
          py::gil_scoped_release nogil;
          error = scan_fast::jpeg_decode_error(reinterpret_cast<const uint8_t*>(buffer), static_cast<size_t>(size));
        }
        if (error.empty()) return std::nullopt;
        return error;
      },
      py::arg("data"), R"pbdoc(
        None when the JPEG `data` decodes with libjpeg-turbo (at 1/8 scale) without error or warning, as the
        loader's decoder needs; TurboJPEG's message otherwise.
    )pbdoc");

  m.def("set_num_threads", &scan_fast::set_num_threads, py::arg("num_threads"),
        "Threads for the bulk loops; results never depend on it.");
  m.def("get_num_threads", &scan_fast::get_num_threads);
  m.attr("MAX_SAMPLES") = SampleSet::kMaxSamples;

#ifdef VERSION_INFO
  m.attr("__version__") = MACRO_STRINGIFY(VERSION_INFO);
#else
  m.attr("__version__") = "dev";
#endif
}
