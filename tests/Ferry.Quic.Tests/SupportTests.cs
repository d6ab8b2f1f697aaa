namespace Ferry.Quic.Tests;

/// <summary>Native library loading and version check.</summary>
public sealed class SupportTests
{
    [Fact]
    public void Reports_support_or_names_the_packages()
    {
        if (QuicSupport.IsSupported)
        {
            Assert.StartsWith("0.12.", QuicSupport.Ngtcp2Version, StringComparison.Ordinal);
            Assert.Null(QuicSupport.NotSupportedReason);
        }
        else
        {
            Assert.Contains("libngtcp2", QuicSupport.NotSupportedReason, StringComparison.Ordinal);
        }
    }
}
