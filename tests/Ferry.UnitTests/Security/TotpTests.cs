using System.Text;
using Ferry.Core.Security;

namespace Ferry.UnitTests.Security;

/// <summary>The console's second factor: RFC 6238 codes, the one-step window, replay refusal and the base32 secret.</summary>
public sealed class TotpTests
{
    // RFC 6238 appendix B, SHA-1 key; the RFC's 8-digit codes end in these 6 digits.
    private static readonly byte[] RfcSecret = Encoding.ASCII.GetBytes("12345678901234567890");

    [Theory]
    [InlineData(59L, "287082")]
    [InlineData(1111111109L, "081804")]
    [InlineData(1111111111L, "050471")]
    [InlineData(1234567890L, "005924")]
    [InlineData(2000000000L, "279037")]
    [InlineData(20000000000L, "353130")]
    public void Codes_match_the_rfc_6238_test_vectors(long unixSeconds, string expected)
        => Assert.Equal(expected, Totp.Code(RfcSecret, Totp.StepAt(DateTimeOffset.FromUnixTimeSeconds(unixSeconds))));

    [Fact]
    public void A_code_is_accepted_one_step_either_side_and_not_beyond()
    {
        var now = DateTimeOffset.FromUnixTimeSeconds(1_700_000_000);
        var step = Totp.StepAt(now);
        Assert.Equal(step, Totp.Verify(RfcSecret, Totp.Code(RfcSecret, step), now, 0));
        Assert.Equal(step - 1, Totp.Verify(RfcSecret, Totp.Code(RfcSecret, step - 1), now, 0));
        Assert.Equal(step + 1, Totp.Verify(RfcSecret, Totp.Code(RfcSecret, step + 1), now, 0));
        Assert.Null(Totp.Verify(RfcSecret, Totp.Code(RfcSecret, step - 2), now, 0));
        Assert.Null(Totp.Verify(RfcSecret, Totp.Code(RfcSecret, step + 2), now, 0));
    }

    [Fact]
    public void A_code_already_used_is_refused()
    {
        var now = DateTimeOffset.FromUnixTimeSeconds(1_700_000_000);
        var step = Totp.StepAt(now);
        var code = Totp.Code(RfcSecret, step);
        Assert.Null(Totp.Verify(RfcSecret, code, now, lastUsedStep: step));
        // An older code after a newer one was used is refused too.
        Assert.Null(Totp.Verify(RfcSecret, Totp.Code(RfcSecret, step - 1), now, lastUsedStep: step));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("12345")]
    [InlineData("1234567")]
    [InlineData("12a456")]
    [InlineData("000000")]
    public void Malformed_or_wrong_codes_are_refused(string? code)
    {
        var now = DateTimeOffset.FromUnixTimeSeconds(1_700_000_000);
        // "000000" is wrong for this secret at this time (checked, so the case means what it says).
        Assert.DoesNotContain("000000", Enumerable.Range(-1, 3).Select(d => Totp.Code(RfcSecret, Totp.StepAt(now) + d)));
        Assert.Null(Totp.Verify(RfcSecret, code, now, 0));
    }

    [Fact]
    public void Spaces_typed_inside_a_code_are_ignored()
    {
        var now = DateTimeOffset.FromUnixTimeSeconds(1_700_000_000);
        var code = Totp.Code(RfcSecret, Totp.StepAt(now));
        Assert.NotNull(Totp.Verify(RfcSecret, code[..3] + " " + code[3..], now, 0));
    }

    [Fact]
    public void Base32_round_trips_and_matches_rfc_4648()
    {
        // RFC 4648 §10, without padding.
        Assert.Equal("MZXW6YTBOI", Totp.ToBase32(Encoding.ASCII.GetBytes("foobar")));
        Assert.Equal("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", Totp.ToBase32(RfcSecret));
        var secret = Totp.NewSecret();
        Assert.Equal(20, secret.Length);
        Assert.Equal(secret, Totp.FromBase32(Totp.ToBase32(secret)));
        Assert.Equal(Encoding.ASCII.GetBytes("foobar"), Totp.FromBase32("mzxw 6ytb oi======"));
        Assert.Null(Totp.FromBase32("MZXW1"));
    }

    [Fact]
    public void The_provisioning_uri_names_issuer_account_and_parameters()
    {
        var uri = Totp.ProvisioningUri("Ferry", "ops admin", RfcSecret);
        Assert.Equal("otpauth://totp/Ferry:ops%20admin?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Ferry&algorithm=SHA1&digits=6&period=30", uri);
    }
}
