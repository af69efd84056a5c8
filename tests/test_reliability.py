"""End to end: faults injected by the fake API, by request number (issue 3).

Every run goes through `run_script`, which also checks that the key is in nothing printed.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import ssl

import pytest

import experiments
from conftest import SCRIPT, assert_no_key
from fake_api import API_KEY, Experiment, FakeBraintrust
from test_cli import non_empty_pages


def all_records(catalog):
    return [experiments.expected_record(catalog.rich_cases, n) for n in experiments.RICH_ORDER]


def retry_lines(stderr):
    return [line for line in stderr.splitlines() if "retrying in" in line]


def announced_waits(stderr):
    """The seconds each retry line says it waits."""
    return [float(re.search(r"retrying in (\d+\.\d) s", line)[1]) for line in retry_lines(stderr)]


def gap(api, first, second):
    """Seconds between the fake receiving request `first` and request `second` (1-based)."""
    return api.requests[second - 1].at - api.requests[first - 1].at


# -- retried, then recovered ----------------------------------------------------------------

def test_a_429_waits_the_seconds_retry_after_asks_then_recovers(run, api, catalog):
    api.faults[1] = {"status": 429, "headers": {"Retry-After": "2"}, "body": "slow down"}
    result = run(catalog.rich)
    assert result.json() == all_records(catalog)
    assert gap(api, 1, 2) >= 1.9
    assert retry_lines(result.stderr) == [
        "page 1: the API answered 429; retrying in 2.0 s (attempt 2 of 6)"]


def test_a_429_with_an_http_date_in_retry_after_waits_until_that_date(run, api, catalog):
    # The date is written when the fake answers, 3 s ahead, in whole seconds: the wait is
    # 2 to 3 s, less however long the answer took to be read (a second is a loaded
    # machine's margin), and the backoff alone would wait at most 1 s.
    api.faults[1] = {"status": 429, "retry_after_in": 3}
    result = run(catalog.rich)
    assert result.json() == all_records(catalog)
    [wait] = announced_waits(result.stderr)
    assert 1.0 < wait <= 3.0
    assert gap(api, 1, 2) >= wait - 0.05  # and it did wait that long


def test_retry_after_is_capped_at_a_minute(api, env, catalog, tmp_path):
    # The cap shows in the announced wait; the run is interrupted rather than waited out.
    api.faults[1] = {"status": 503, "headers": {"Retry-After": "3600"}}
    process = subprocess.Popen([sys.executable, str(SCRIPT), catalog.rich], env=env,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_line = process.stderr.readline().decode()
    process.send_signal(signal.SIGINT)
    stdout, rest = process.communicate(timeout=20)
    assert_no_key(stdout, first_line.encode(), rest)
    assert first_line == "page 1: the API answered 503; retrying in 60.0 s (attempt 2 of 6)\n"
    assert process.returncode == 130


def test_502_503_and_500_in_a_row_are_retried_with_growing_waits(run, api, catalog):
    api.faults.update({1: {"status": 502}, 2: {"status": 503}, 3: {"status": 500}})
    result = run(catalog.rich)
    assert result.json() == all_records(catalog)
    lines = retry_lines(result.stderr)
    assert [line.split(";")[0] for line in lines] == [
        "page 1: the API answered 502", "page 1: the API answered 503",
        "page 1: the API answered 500"]
    assert [line.split("(")[-1] for line in lines] == ["attempt 2 of 6)", "attempt 3 of 6)",
                                                       "attempt 4 of 6)"]
    # 0.5 s, doubling, each plus up to 0.5 s of jitter: what the lines announce.
    first, second, third = announced_waits(result.stderr)
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 1.5 and 2.0 <= third <= 2.5


def test_a_connection_dropped_before_the_answer_is_retried(run, api, catalog):
    api.faults[2] = {"drop": True}
    result = run(catalog.rich, "--limit", "5")
    assert result.json() == all_records(catalog)
    assert retry_lines(result.stderr)[0].startswith("page 2: the connection failed")


def test_an_answer_cut_off_after_the_headers_is_fetched_again(run, api, catalog):
    api.faults[2] = {"cut": True}
    result = run(catalog.rich, "--limit", "5")
    assert result.json() == all_records(catalog)
    assert retry_lines(result.stderr)[0].startswith("page 2: the connection failed")
    assert api.requests[1].body == api.requests[2].body


def test_a_read_timeout_is_retried(run, api, env, catalog):
    api.faults[1] = {"delay": 10}  # far past the read timeout, on any machine
    result = run(catalog.rich, env=dict(env, BRAINTRUST_HTTP_TIMEOUT="1"))
    assert result.json() == all_records(catalog)
    assert "timed out" in retry_lines(result.stderr)[0]


def test_quiet_hides_the_retry_lines(run, api, catalog):
    api.faults[1] = {"status": 503, "headers": {"Retry-After": "0"}}
    result = run(catalog.rich, "--quiet")
    assert (result.code, result.stderr) == (0, "")


# -- not retried, or given up on ------------------------------------------------------------

def test_a_200_html_page_is_not_retried_and_says_what_came_back(run, api, catalog):
    api.faults[1] = {"html": True}
    result = run(catalog.rich)
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 1)
    assert "not JSON" in result.stderr and "text/html" in result.stderr
    assert "Gateway login" in result.stderr


def test_a_200_json_answer_without_events_is_not_retried(run, api, catalog):
    api.faults[1] = {"status": 200, "body": '{"objects": []}', "content_type": "application/json"}
    result = run(catalog.rich)
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 1)
    assert "not a page of events" in result.stderr


def test_a_persistent_500_fails_cleanly_after_six_tries(run, api, catalog):
    for number in range(1, 10):
        api.faults[number] = {"status": 500, "headers": {"Retry-After": "0"},
                              "body": "database unavailable"}
    result = run(catalog.rich)
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 6)
    last = result.stderr.splitlines()[-1]
    assert "500" in last and "after 6 tries" in last and "database unavailable" in last
    assert len(retry_lines(result.stderr)) == 5


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_never_retried(run, api, catalog, status):
    api.faults[1] = {"status": status, "body": "no"}
    result = run(catalog.rich)
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 1)
    assert retry_lines(result.stderr) == []


def test_a_repeating_cursor_stops_the_run_with_an_error(run, api, catalog):
    api.faults[3] = {"repeat_cursor": True}
    result = run(catalog.rich, "--limit", "3")
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 3)
    assert result.stderr == (
        "fetch_experiment_results.py: error: page 3: the API sent back a cursor it had already "
        "sent, so paging would never end; stopping. Try again later, or report it to "
        "Braintrust\n")


def test_a_server_message_is_trimmed_and_stripped_of_terminal_escapes(run, api, catalog):
    body = "\x1b]0;pwned\x07\x1b[31mbad request\x1b[0m\r\nline two\x00" + "x" * 1000
    api.faults[1] = {"status": 400, "body": body}
    result = run(catalog.rich)
    assert result.code == 1
    assert "\x1b" not in result.stderr and "\x00" not in result.stderr and "\r" not in result.stderr
    assert "pwned" not in result.stderr
    assert "bad request line two xxx" in result.stderr
    assert len(result.stderr) < 600


def test_a_server_that_echoes_the_key_gets_it_redacted(run, api, catalog):
    api.faults[1] = {"status": 500, "headers": {"Retry-After": "0"},
                     "body": f"bad token {API_KEY}"}
    for number in range(2, 7):
        api.faults[number] = api.faults[1]
    result = run(catalog.rich)  # run_script asserts the key is absent
    assert result.code == 1 and "bad token [redacted]" in result.stderr


def test_a_refused_connection_fails_at_once_saying_nothing_listens_there(run, env, catalog):
    # Port 9 (discard) has no listener here: the kernel refuses at once, every time.
    result = run(catalog.rich, env=dict(env, BRAINTRUST_API_URL="http://127.0.0.1:9"))
    assert (result.code, result.stdout) == (1, b"")
    assert result.stderr.splitlines() == [
        "fetch_experiment_results.py: error: page 1: could not reach 127.0.0.1:9: the "
        "connection was refused, so nothing listens there; check the API URL (--api-url or "
        "BRAINTRUST_API_URL, e.g. https://api.braintrust.dev)"]


# -- what retrying cannot heal: at once ------------------------------------------------------

def test_a_host_name_that_does_not_resolve_fails_at_once(run, env, catalog):
    # .invalid never resolves (RFC 2606).
    result = run(catalog.rich, env=dict(env, BRAINTRUST_API_URL="https://no-such-host.invalid"))
    assert (result.code, result.stdout, retry_lines(result.stderr)) == (1, b"", [])
    [line] = result.stderr.splitlines()
    assert "'no-such-host.invalid' does not resolve" in line
    assert "check the API URL" in line and "network" in line


@pytest.fixture(scope="module")
def tls_api(catalog):
    """The fake API over HTTPS, with a certificate from a CA that the system does not trust."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeBraintrust(tls=context)
    server.add(Experiment(experiments.rows_of(catalog.rich_cases)), catalog.rich)
    with authority.cert_pem.tempfile() as ca_file:
        yield server, ca_file
    server.close()


def test_an_untrusted_certificate_fails_at_once_saying_how_to_trust_a_private_ca(
        run, env, catalog, tls_api):
    server, _ = tls_api
    result = run(catalog.rich, env=dict(env, BRAINTRUST_API_URL=server.url))
    assert (result.code, result.stdout, retry_lines(result.stderr)) == (1, b"", [])
    [line] = result.stderr.splitlines()
    assert "TLS" in line and "REQUESTS_CA_BUNDLE" in line and "SSL_CERT_FILE" in line
    assert server.requests == []


def test_requests_ca_bundle_makes_a_private_ca_trusted(run, env, catalog, tls_api):
    server, ca_file = tls_api
    result = run(catalog.rich, env=dict(env, BRAINTRUST_API_URL=server.url,
                                        REQUESTS_CA_BUNDLE=ca_file))
    assert result.json() == all_records(catalog)


def test_a_bare_404_from_a_wrong_api_path_says_to_check_the_api_url(run, api, catalog):
    result = run(catalog.rich, "--api-url", api.url + "/api")
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 1)
    assert api.requests[0].path == f"/api/v1/experiment/{catalog.rich}/fetch"
    [line] = result.stderr.splitlines()
    assert f"check the API URL {api.url}/api: it is the base URL" in line
    assert "without /v1" in line and "404" in line


@pytest.mark.parametrize("suffix", ["/v1/"])  # every form, as a unit: test_usage.py
def test_an_api_url_ending_in_v1_is_refused_before_any_request(run, api, catalog, suffix):
    result = run(catalog.rich, "--api-url", api.url + suffix)
    assert (result.code, api.requests) == (2, [])
    assert "ends in /v1: give the base URL without it" in result.stderr


# -- BRAINTRUST_NUM_RETRIES ------------------------------------------------------------------

@pytest.mark.parametrize("retries, tries", [("0", 1), ("2", 3)])
def test_num_retries_sets_the_retries_per_request(run, api, env, catalog, retries, tries):
    for number in range(1, 10):
        api.faults[number] = {"status": 503, "headers": {"Retry-After": "0"}}
    result = run(catalog.rich, env=dict(env, BRAINTRUST_NUM_RETRIES=retries))
    assert (result.code, len(api.requests)) == (1, tries)
    assert len(retry_lines(result.stderr)) == tries - 1
    assert f"after {tries} tr" in result.stderr.splitlines()[-1]


def test_num_retries_numbers_the_attempts_out_of_its_total(run, api, env, catalog):
    api.faults[1] = {"status": 503, "headers": {"Retry-After": "0"}}
    result = run(catalog.rich, env=dict(env, BRAINTRUST_NUM_RETRIES="2"))
    assert retry_lines(result.stderr) == [
        "page 1: the API answered 503; retrying in 0.0 s (attempt 2 of 3)"]


@pytest.mark.parametrize("value", ["two"])  # every refused value: test_records.py
def test_a_bad_num_retries_is_a_usage_error_before_any_request(run, api, env, catalog, value):
    result = run(catalog.rich, env=dict(env, BRAINTRUST_NUM_RETRIES=value))
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert "BRAINTRUST_NUM_RETRIES" in result.stderr


# -- redirects ------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["redirect_encoded", "redirect_cursor_on_303",
                                   "redirect_cursor_on_blob", "redirect_cursor_amz_meta"])
def test_behind_a_303_the_next_cursor_is_found_wherever_it_travels(run, api, catalog, which):
    # In the body; in x-bt-cursor on the 303; in x-bt-cursor or x-amz-meta-bt_cursor on the
    # object store's answer.
    experiment_id = getattr(catalog, which)
    result = run(experiment_id, "--limit", "5")
    assert result.json() == all_records(catalog)
    pages = non_empty_pages(api, experiment_id, 5)
    assert pages > 3 and len(api.fetches()) == pages + 1
    assert len(api.blob_requests) == pages + 1


@pytest.mark.parametrize("which", ["redirect_encoded", "redirect_raw",
                                   "redirect_cursor_on_303"])  # the last: two pages at once
def test_a_303_to_an_object_store_is_followed_without_the_key(run, api, catalog, which):
    result = run(getattr(catalog, which), "--limit", "10")
    assert result.json() == all_records(catalog)
    assert api.blob_requests and all(r.method == "GET" for r in api.blob_requests)
    assert all("authorization" not in r.headers for r in api.blob_requests)
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in api.requests)


# -- nothing lost ---------------------------------------------------------------------------

def test_a_failed_run_leaves_an_existing_output_file_as_it_was(run, api, catalog, tmp_path):
    target = tmp_path / "results.json"
    target.write_bytes(b"previous results\n")
    api.faults[3] = {"status": 403, "body": "revoked"}
    result = run(catalog.rich, "--limit", "3", "--output", str(target))
    assert result.code == 1
    assert target.read_bytes() == b"previous results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_during_a_slow_page_exit_with_one_line_and_no_output(
        api, env, catalog, tmp_path, sig, code, word):
    target = tmp_path / "results.json"
    target.write_bytes(b"previous results\n")
    api.faults[2] = {"delay": 60}  # longer than the test waits; reset() ends it
    process = subprocess.Popen([sys.executable, str(SCRIPT), catalog.rich, "--limit", "3",
                                "--output", str(target)], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert api.wait_for_fetches(2, timeout=30)  # page 1 is in; page 2 waits on the server
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == code
    assert stdout == b""
    [line] = stderr.decode().splitlines()
    so_far = experiments.live_cases_after(api.experiments[catalog.rich].rows, 3, 1)
    assert line == (f"fetch_experiment_results.py: {word} after 1 page of the experiment "
                    f"({so_far} record{'' if so_far == 1 else 's'} so far); "
                    f"{str(target)!r} is unchanged")
    assert target.read_bytes() == b"previous results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert_no_key(stdout, stderr)


# -- a deadline on every request (issue 15) --------------------------------------------------

def deadline_env(env, retries, seconds="1"):
    return dict(env, BRAINTRUST_HTTP_DEADLINE=seconds, BRAINTRUST_NUM_RETRIES=str(retries),
                BRAINTRUST_HTTP_TIMEOUT="30")


def test_a_body_trickled_byte_by_byte_is_cut_off_at_the_deadline_and_asked_again(
        run, api, env, catalog):
    # Each byte comes well within the read timeout, so only the deadline can end it.
    api.faults[1] = {"trickle": 0.05}
    # 5 s: the honest second answer comes well within it, on a loaded machine too.
    result = run(catalog.rich, env=deadline_env(env, 1, "5"), timeout=40)
    assert result.json() == all_records(catalog)
    assert [line.split(";")[0] for line in retry_lines(result.stderr)] == [
        "page 1: the connection failed (no whole answer within BRAINTRUST_HTTP_DEADLINE (5 s))"]
    assert [r.body for r in api.fetches()][:2] == [{"limit": 1000}] * 2  # page 1 again


def test_a_body_trickled_on_every_try_exits_1_naming_the_deadline(run, api, env, catalog):
    api.faults.update({1: {"trickle": 0.05}, 2: {"trickle": 0.05}})
    result = run(catalog.rich, env=deadline_env(env, 1), timeout=30)
    assert (result.code, result.stdout) == (1, b"")
    assert result.stderr.splitlines()[-1] == (
        "fetch_experiment_results.py: error: page 1: no whole answer within "
        "BRAINTRUST_HTTP_DEADLINE (1 s), 2 times: the server (or a proxy) is sending it very "
        "slowly; try again later, or raise BRAINTRUST_HTTP_DEADLINE")
