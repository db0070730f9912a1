"""Secrets are stored hashed and checked in constant time."""

from chargedesk.security import hash_api_key, hash_password, new_api_key, verify_password


def test_passwords_are_salted_scrypt_hashes() -> None:
    first, second = hash_password("a-station-password"), hash_password("a-station-password")
    assert first != second and first.startswith("scrypt$")
    assert "a-station-password" not in first
    assert verify_password("a-station-password", first)
    assert not verify_password("a-station-passworD", first)
    assert not verify_password("anything", "not-a-hash")


def test_api_keys_are_random_and_stored_as_digests() -> None:
    key = new_api_key()
    assert key.startswith("cd_") and len(key) > 40 and key != new_api_key()
    assert hash_api_key(key) == hash_api_key(key) and key not in hash_api_key(key)
