"""Bank accounts are checked by the rules Bankgirot publishes before anyone is debited."""

from __future__ import annotations

import pytest

from billing_api.bankaccount import (
    validate_account,
    validate_bic,
    validate_iban,
    validate_payer_id,
)
from billing_api.service import BillingError

# Each check digit below is worked out in the comment from the document's rule.
VALID = [
    # type 1, comment 1: mod 11 over clearing digits 2-4 and the account, weights 1..10
    # from the right: 000 0123455 -> 5*1 + 5*2 + 4*3 + 3*4 + 2*5 + 1*6 = 55 = 5 * 11.
    ("5000", "01 234 55", "SEB", "5000", "0123455", "5000000000123455"),
    ("7000", "765 432-4", "Swedbank", "7000", "7654324", "7000000007654324"),
    # type 1, comment 2: all four clearing digits count: 4000 1234567 -> sum 88 = 8 * 11.
    ("4000", "1234567", "Nordea", "4000", "1234567", "4000000001234567"),
    ("9020", "1111111", "Länsförsäkringar Bank", "9020", "1111111", "9020000001111111"),
    # type 2, comment 2 (Handelsbanken): mod 11 over the nine-digit account alone:
    # 123456789 -> 9*1 + 8*2 + ... + 1*9 = 165 = 15 * 11.
    ("6789", "123 456 789", "Handelsbanken", "6789", "123456789", "6789000123456789"),
    # type 2, comment 3 (Swedbank 8xxx-x): the clearing's fifth digit is its own Luhn check,
    # the account a Luhn number zero-filled to ten digits; Bankgirot's form drops the fifth.
    ("8327-9", "123 456 789-7", "Swedbank", "83279", "1234567897", "8327001234567897"),
    ("8327-9", "1234567-4", "Swedbank", "83279", "0012345674", "8327000012345674"),
    # type 2, comment 1: Nordea personkonto, the personnummer with its Luhn digit.
    ("3300", "800928-6249", "Nordea (personkonto)", "3300", "8009286249", "3300008009286249"),
    ("9960", "1234567-4", "Nordea (Plusgirot)", "9960", "0012345674", "9960000012345674"),
]


@pytest.mark.parametrize(("clearing", "account", "bank", "norm_clearing", "norm_account",
                          "bankgirot"), VALID)
def test_valid_accounts_are_normalised_with_their_bank_and_bankgirot_form(
    clearing: str, account: str, bank: str, norm_clearing: str, norm_account: str,
    bankgirot: str,
) -> None:
    checked = validate_account(clearing, account)
    assert (checked.clearing, checked.account, checked.bank) == (norm_clearing, norm_account,
                                                                 bank)
    assert checked.bankgirot == bankgirot
    assert len(checked.bankgirot) == 16


@pytest.mark.parametrize(("clearing", "account"), [
    (c, a[:-1] + str((int(a[-1]) + 1) % 10)) for c, a, *_ in VALID])
def test_a_changed_last_digit_fails_the_check(clearing: str, account: str) -> None:
    with pytest.raises(BillingError, match="check digit is wrong"):
        validate_account(clearing, account)


def test_swedbank_five_digit_clearing_must_carry_its_check_digit() -> None:
    with pytest.raises(BillingError, match="fifth digit is not its check digit"):
        validate_account("8327-8", "1234567897")


def test_only_swedbank_8xxx_has_a_five_digit_clearing_number() -> None:
    with pytest.raises(BillingError, match="only Swedbank"):
        validate_account("50000", "0123455")


@pytest.mark.parametrize("clearing", ["0999", "9999", "2200"])
def test_unknown_clearing_numbers_are_refused(clearing: str) -> None:
    with pytest.raises(BillingError, match=f"clearing number {clearing} belongs to no"):
        validate_account(clearing, "0123455")


@pytest.mark.parametrize(("clearing", "account", "message"), [
    ("5000", "123455", "must have 7 digits"),  # type 1 is never zero-filled
    ("5000", "00123455", "must have 7 digits"),
    ("6789", "1234567890", "must have at most 9 digits"),
    ("8327-9", "12345678901", "must have at most 10 digits"),
    ("3300", "8009286", "must have 10 digits"),
    ("500", "0123455", "must have four digits"),
    ("5000", "0123X55", "may only contain digits"),
    ("5000", "", "account number is missing"),
])
def test_wrong_shapes_say_what_is_wrong(clearing: str, account: str, message: str) -> None:
    with pytest.raises(BillingError, match=message):
        validate_account(clearing, account)


def test_payer_ids_take_autogiros_twelve_digit_form() -> None:
    assert validate_payer_id("800928-6249") == "198009286249"
    assert validate_payer_id("19800928-6249") == "198009286249"
    assert validate_payer_id("556677-8899") == "005566778899"  # organisation number
    with pytest.raises(BillingError, match="neither a valid personnummer"):
        validate_payer_id("800928-6248")


def test_iban_and_bic_are_checked_and_compacted() -> None:
    assert validate_iban("de89 3704 0044 0532 0130 00") == "DE89370400440532013000"
    assert validate_bic("cobadeffxxx") == "COBADEFFXXX"
    with pytest.raises(BillingError, match=r"IBAN .* is not valid"):
        validate_iban("DE89 3704 0044 0532 0130 01")
    with pytest.raises(BillingError, match=r"BIC .* is not valid"):
        validate_bic("COBADE")
