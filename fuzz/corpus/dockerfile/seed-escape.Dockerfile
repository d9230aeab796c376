# escape=`
FROM mcr.microsoft.com/windows:ltsc `
  AS a
FROM a
